"""``SiameseModule``: the LightningModule around a Siamese net with an ``embed`` / ``similarity`` /
``pair_logits`` interface (e.g. :class:`~cbir_lightning.models.koch.KochSiameseNet`).

Training batches are either aligned pairs ``(x1, x2, same)`` (Koch: BCE per pair) or class batches
``(images, labels)`` (BCE on every pair of the batch, see
:func:`~cbir_lightning.losses.pair_bce.all_pairs_bce`).
Validation, test and predict batches ``(images, labels, indices)`` produce embeddings; the retrieval
callback turns them into metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn

from cbir_lightning.losses.pair_bce import all_pairs_bce, all_pairs_softmax, pair_bce
from cbir_lightning.models.embedding_module import EmbeddingModule
from cbir_lightning.models.param_groups import layer_param_groups

BATCH_LOSSES = {"bce": all_pairs_bce, "softmax": all_pairs_softmax}


class SiameseModule(EmbeddingModule):
    """Args:
    net: the Siamese network.
    optimizer: optimizer factory (default Adam, lr 6e-5 as in the reference CBIR write-up).
    lr_scheduler: optional scheduler factory, stepped every ``lr_scheduler_interval``.
    layer_lr_multipliers / layer_weight_decay: per-layer learning-rate factors and L2 weights, in the
        order of the net's weight layers (Koch's per-layer settings); ``None`` keeps the optimizer's.
    batch_loss: loss on class batches: ``"bce"`` (balanced BCE on every pair) or ``"softmax"`` (every
        positive pair against all the anchor's negatives, :func:`all_pairs_softmax`).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = lambda params: torch.optim.Adam(params, lr=6e-5),
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
        layer_lr_multipliers: Sequence[float] | None = None,
        layer_weight_decay: Sequence[float] | None = None,
        batch_loss: str = "bce",
    ) -> None:
        super().__init__()
        if batch_loss not in BATCH_LOSSES:
            raise ValueError(f"batch_loss must be one of {sorted(BATCH_LOSSES)}, got {batch_loss!r}")
        # Under the CLI the hyperparameters are the config (class paths), which rebuilds the net from a
        # checkpoint; objects passed from Python are not saved (the weights are in the state dict).
        from_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=[] if from_config else ["net", "optimizer", "lr_scheduler"])
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.embed(images)

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        """Scores ``[nq, nd]``, higher = more similar: the net's own similarity."""
        return self.net.similarity(queries, database)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if len(batch) == 3:
            x1, x2, same = batch
            loss = pair_bce(self.net.pair_logits(self.embed(x1), self.embed(x2)), same)
            size = len(same)
        else:
            images, labels = batch
            embeddings = self.embed(images)
            loss = BATCH_LOSSES[self.hparams.batch_loss](self.similarity(embeddings, embeddings), labels)
            size = len(labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def param_groups(self) -> list[dict]:
        return layer_param_groups(
            self.net, self.hparams.layer_lr_multipliers, self.hparams.layer_weight_decay
        )
