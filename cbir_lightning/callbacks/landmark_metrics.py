"""Revisited Oxford / Paris mAP (Easy / Medium / Hard) of the model being trained, every validation epoch.

The callback is given its test set (a :class:`~cbir_lightning.contracts.GroundTruthData`, e.g.
``data_modules.LandmarksTestDataModule`` by ``class_path`` in a config): at the end of each validation
(and test) epoch it embeds the queries and the database with the module's ``embed``
(:func:`cbir_lightning.inference.embed_dataset`: each rank a shard, all-gathered), scores them with
:func:`cbir_lightning.metrics.revisited_metrics` (or ``original_metrics`` for the original ground truth)
and logs ``val/<dataset>/mAP_E``, ``mAP_M``, ``mAP_H`` (original: ``val/<dataset>/mAP``). Use one callback
per test set. With ``rerank`` (``aqe``, ``dba``, ``diffusion`` or a list of them, see
:func:`cbir_lightning.rerank.rerank_scores`) it also logs the re-ranked lists' scores, as
``val/<dataset>/<reranker>/mAP_M`` (``none``: the plain names).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from cbir_lightning.contracts import GroundTruthData
from cbir_lightning.errors import CbirError
from cbir_lightning.inference import embed_dataset
from cbir_lightning.metrics import original_metrics, revisited_metrics
from cbir_lightning.rerank import reranked_similarity
from cbir_lightning.rerank.rerank import check_reranker

SHORT = {"easy": "E", "medium": "M", "hard": "H"}


def landmark_scores(embeddings: torch.Tensor, gnd, rerank: str = "none", **options) -> dict[str, float]:
    """``{"mAP_E", "mAP_M", "mAP_H", "mP@10_M", ...}`` (revisited) or ``{"mAP"}`` (original) from the
    embeddings of the queries followed by the database (the DataModule's item order), ranked by dot
    product or re-ranked by ``rerank`` (``aqe``, ``dba``, ``diffusion``; ``options``: the keyword
    arguments of :func:`cbir_lightning.rerank.rerank_scores`, e.g. ``graph_k``)."""
    query, database = embeddings[: gnd.num_queries].float(), embeddings[gnd.num_queries :].float()
    similarity = "dot"
    if check_reranker(rerank) != "none":
        query, database, similarity = reranked_similarity(rerank, query, database, **options)
    if not gnd.revisited:
        return {"mAP": original_metrics(query, database, gnd.gnd, similarity=similarity)["mAP"]}
    out = {}
    for protocol, metrics in revisited_metrics(query, database, gnd.gnd, similarity=similarity).items():
        for key, value in metrics.items():
            out[f"{key}_{SHORT[protocol]}"] = value
    return out


class LandmarkMetrics(Callback):
    """Args:
    data: the test set, a :class:`~cbir_lightning.contracts.GroundTruthData` (in a config:
        ``{class_path: data_modules.LandmarksTestDataModule, init_args: {root: ..., dataset: roxford5k}}``).
    every_n_epochs: score every n-th validation epoch (the set can be slow to embed).
    rerank: ``none`` or a re-ranker, or a list of them: each one's scores are logged.
    rerank_options: keyword arguments of :func:`cbir_lightning.rerank.rerank_scores` (``graph_k``,
        ``kq``, ``neighbours``, ...). Diffusion's ``graph_k`` (50) must stay well below the database
        size: a graph where every image is every other's neighbour ranks all queries alike.
    """

    def __init__(
        self,
        data: pl.LightningDataModule,
        every_n_epochs: int = 1,
        rerank: str | Sequence[str] = "none",
        rerank_options: dict | None = None,
    ) -> None:
        if not all(hasattr(type(data), name) for name in ("name", "setup", "test_dataloader")):
            raise CbirError(
                f"LandmarkMetrics needs a test set with ground truth (name, gnd, test_dataloader), "
                f"not {type(data).__name__}; e.g. data_modules.LandmarksTestDataModule"
            )
        self.data: GroundTruthData = data  # its gnd is read after setup
        self.rerank = [rerank] if isinstance(rerank, str) else list(rerank)
        self.rerank_options = dict(rerank_options or {})
        for name in self.rerank:
            check_reranker(name)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.last_metrics: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.data.setup(stage)  # a missing file stops the run before training, with one line

    def score(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Metrics of ``pl_module`` on the set (embeds with ``pl_module.embed`` in eval mode, in the test
        loader's batches)."""
        self.data.setup()
        loader = self.data.test_dataloader()
        embeddings = embed_dataset(
            pl_module,
            loader.dataset,
            batch_size=loader.batch_size or 1,
            num_workers=loader.num_workers,
        )
        out = {}
        for name in self.rerank:
            prefix = "" if name == "none" else f"{name}/"
            scores = landmark_scores(embeddings.cpu(), self.data.gnd, name, **self.rerank_options)
            out.update({f"{prefix}{key}": value for key, value in scores.items()})
        return out

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        metrics = self.score(pl_module)
        self.last_metrics = {f"{prefix}/{self.data.name}/{k}": float(v) for k, v in metrics.items()}
        for name, value in self.last_metrics.items():
            pl_module.log(name, value, sync_dist=False, prog_bar=name.endswith(("mAP_M", "/mAP")))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")
