"""``SiameseModule``: the LightningModule around a Siamese net with an ``embed`` / ``similarity`` /
``pair_logits`` interface (e.g. :class:`~cbir_lightning.models.koch_net.KochSiameseNet`).

Training batches are :class:`~cbir_lightning.contracts.PairBatch` (Koch: ``pair_loss``, BCE per pair;
``first`` and ``second`` embedded in separate forward passes) or
:class:`~cbir_lightning.contracts.ClassBatch` (``batch_loss`` on the whole batch). Both losses are
called as pytorch-metric-learning losses; the losses on scores
(:class:`~cbir_lightning.losses.ScoreLoss` subclasses) score with the net's head, given to them as a
:class:`~cbir_lightning.losses.ModelSimilarity`. Validation, test and predict batches produce embeddings;
the retrieval callback turns them into metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from cbir_lightning.contracts import ClassBatch, PairBatch
from cbir_lightning.losses.by_name import batch_loss as build_batch_loss
from cbir_lightning.losses.model_similarity import ModelSimilarity
from cbir_lightning.losses.pair_bce_loss import PairBCELoss
from cbir_lightning.losses.pairs import aligned_pairs
from cbir_lightning.losses.score_loss import ScoreLoss
from cbir_lightning.models.embedding_module import EmbeddingModule
from cbir_lightning.models.param_groups import layer_param_groups


class SiameseModule(EmbeddingModule):
    """Args:
    net: the Siamese network.
    optimizer: optimizer factory (default Adam, lr 6e-5 as in the reference CBIR write-up).
    lr_scheduler: optional scheduler factory, stepped every ``lr_scheduler_interval``.
    layer_lr_multipliers / layer_weight_decay: per-layer learning-rate factors and L2 weights, in the
        order of the net's weight layers (Koch's per-layer settings); ``None`` keeps the optimizer's.
    batch_loss: loss on class batches: a loss (``class_path``), or ``"bce"``
        (:class:`~cbir_lightning.losses.AllPairsBCELoss`, balanced BCE on every pair) or ``"softmax"``
        (:class:`~cbir_lightning.losses.InBatchSoftmaxLoss`, every positive pair against all the
        anchor's negatives).
    pair_loss: loss on pair batches (default :class:`~cbir_lightning.losses.PairBCELoss`, Koch's).
    """

    dot_product_similarity = False  # the learned L1 head, not a dot product

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = lambda params: torch.optim.Adam(params, lr=6e-5),
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
        layer_lr_multipliers: Sequence[float] | None = None,
        layer_weight_decay: Sequence[float] | None = None,
        batch_loss: str | nn.Module = "bce",
        pair_loss: nn.Module | None = None,
    ) -> None:
        losses = {"batch_loss": batch_loss, "pair_loss": pair_loss}
        objects = ["net", *(k for k, v in losses.items() if isinstance(v, nn.Module))]
        super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, objects=objects)
        self.net = net
        self.batch_loss = build_batch_loss(batch_loss)
        self.pair_loss = PairBCELoss() if pair_loss is None else pair_loss
        head = ModelSimilarity(self.net.pair_logits, self.net.similarity)
        for loss in (self.batch_loss, self.pair_loss):
            if isinstance(loss, ScoreLoss):
                loss.use_similarity(head)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.embed(images)

    @property
    def input_size(self) -> int | None:
        return self.net.input_size

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        """Scores ``[nq, nd]``, higher = more similar: the net's own similarity."""
        return self.net.similarity(queries, database)

    def training_step(self, batch: PairBatch | ClassBatch, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, PairBatch):
            embeddings = torch.cat([self.embed(batch.first), self.embed(batch.second)])
            loss = self.pair_loss(embeddings, *aligned_pairs(batch.same))
            size = len(batch.same)
        elif isinstance(batch, ClassBatch):
            loss = self.batch_loss(self.embed(batch.images), batch.labels)
            size = len(batch.labels)
        else:
            raise TypeError(f"SiameseModule trains on PairBatch or ClassBatch, got {type(batch).__name__}")
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def param_groups(self) -> list[dict]:
        return layer_param_groups(
            self.net, self.hparams.layer_lr_multipliers, self.hparams.layer_weight_decay
        )
