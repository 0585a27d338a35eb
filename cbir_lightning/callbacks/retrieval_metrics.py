"""Per-epoch retrieval metrics (mAP, recall@k, precision@k) and N-way one-shot accuracy.

The module's validation/test steps return ``{"embeddings", "labels", "indices"}``; this callback keeps
them, gathers them over ranks (each dataset item once, see :func:`gather_unique`), scores every item as a
query against all the others with the module's own ``similarity`` (or, when the DataModule has a
``retrieval_split`` mask, its queries against its database only), and scores the DataModule's
``episodes`` (if it has any). Every rank computes the same numbers, so the logged values equal a
single-process run's.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn

from cbir_lightning.callbacks.example_grids import log_example_grids
from cbir_lightning.callbacks.gather import gather_unique
from cbir_lightning.errors import CbirError
from cbir_lightning.metrics import episode_scores, oneshot_accuracy, retrieval_metrics


class RetrievalMetrics(Callback):
    """Args:
    ks: cut-offs for recall@k, precision@k and mAP@k.
    chunk_size: queries scored at a time (bounds memory).
    log_examples: how many retrieval queries and one-shot tasks to draw into W&B image grids
        each epoch (0 to turn off the grids and the table).
    tile_size: pixels per grid tile (small images are enlarged, nearest neighbour).
    embedding_table: rows (evaluation items, evenly spread) of the W&B embedding table for the
        projector (0: none).
    table_every_n_epochs: the table is logged on fit's validation epochs ``n-1, 2n-1, ...`` and its
        last (``max_epochs``) one, and on every ``validate`` and ``test``.
    """

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int = 512,
        log_examples: int = 6,
        tile_size: int = 96,
        embedding_table: int = 200,
        table_every_n_epochs: int = 10,
    ) -> None:
        self.ks, self.chunk_size, self.log_examples = tuple(ks), chunk_size, log_examples
        self.tile_size, self.embedding_table = tile_size, embedding_table
        self.table_every_n_epochs = table_every_n_epochs
        self._parts: list[dict[str, torch.Tensor]] = []
        self.last_metrics: dict[str, float] = {}

    def _reset(self, *args) -> None:
        self._parts = []

    on_validation_epoch_start = on_test_epoch_start = _reset

    def _keep(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and "embeddings" in outputs:
            self._parts.append(
                {
                    k: outputs[k].detach().float().cpu() if k == "embeddings" else outputs[k].cpu()
                    for k in ("embeddings", "labels", "indices")
                }
            )

    on_validation_batch_end = on_test_batch_end = _keep

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._score(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._score(trainer, pl_module, "test")

    def compute(
        self,
        pl_module: pl.LightningModule,
        data: dict[str, torch.Tensor],
        episodes,
        retrieval_split: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Metrics from gathered outputs (pure apart from calling the module's similarity).

        ``retrieval_split``: optional BoolTensor over dataset indices, True for queries; the queries are then
        scored against the other items (the database) only, instead of every item against all others.
        """
        embeddings, labels = data["embeddings"], data["labels"]
        queries, database, query_labels, database_labels = embeddings, embeddings, labels, labels
        if retrieval_split is not None:
            is_query = retrieval_split[data["indices"]]
            queries, query_labels = embeddings[is_query], labels[is_query]
            database, database_labels = embeddings[~is_query], labels[~is_query]
        with torch.no_grad():
            metrics = retrieval_metrics(
                queries,
                database,
                query_labels,
                database_labels,
                similarity=pl_module.similarity,
                ks=self.ks,
                exclude_self=retrieval_split is None,
                chunk_size=self.chunk_size,
            )
            if episodes is not None:
                needed = int(max(episodes.queries.max(), episodes.candidates.max())) + 1
                if len(embeddings) < needed:  # e.g. --trainer.limit_val_batches: part of the set embedded
                    raise CbirError(
                        f"one-shot episodes need all {needed} evaluation images but {len(embeddings)} were "
                        "embedded: do not limit the validation batches (--trainer.limit_val_batches)"
                    )
                scores = episode_scores(
                    embeddings, episodes.queries, episodes.candidates, pl_module.similarity
                )
                metrics[f"oneshot_{episodes.candidates.shape[1]}way"] = oneshot_accuracy(
                    scores, episodes.targets[:, 0]
                )
        return metrics

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        if not self._parts:
            return
        data = gather_unique(pl_module, self._parts)
        self._parts = []
        dm = trainer.datamodule  # a RetrievalData (None when fit is given bare dataloaders)
        episodes, split = (dm.episodes, dm.retrieval_split) if dm is not None else (None, None)
        metrics = self.compute(pl_module, data, episodes, split)
        self.last_metrics = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        for name, value in self.last_metrics.items():
            pl_module.log(name, value, sync_dist=False, prog_bar=name.endswith(("mAP", "way")))
        if self.log_examples and trainer.is_global_zero:
            rows = self.embedding_table if self._table_epoch(trainer) else 0
            log_example_grids(
                trainer, pl_module, data, episodes, prefix, self.log_examples, self.tile_size, rows
            )

    def _table_epoch(self, trainer: pl.Trainer) -> bool:
        """Whether this evaluation logs the embedding table (see ``table_every_n_epochs``)."""
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        epoch = trainer.current_epoch + 1
        return epoch % max(1, self.table_every_n_epochs) == 0 or epoch == trainer.max_epochs
