"""``SiameseModule``: the LightningModule around a Siamese net with an ``embed`` / ``similarity`` /
``pair_logits`` interface (e.g. :class:`~cbir_lightning.models.koch_net.KochSiameseNet`).

It declares the net and the losses; training is the shell's
(:class:`~cbir_lightning.models.embedding_module.EmbeddingModule`): pair batches go to ``pair_loss`` (Koch:
BCE per pair), class batches to ``batch_loss`` (the shell's ``loss``) plus an optional ``class_loss``. All
are called as pytorch-metric-learning losses; the losses on scores
(:class:`~cbir_lightning.losses.ScoreLoss` subclasses) score with the net's head, given to them as a
:class:`~cbir_lightning.losses.ModelSimilarity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jsonargparse import lazy_instance
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from cbir_lightning.losses.all_pairs_bce_loss import AllPairsBCELoss
from cbir_lightning.losses.model_similarity import ModelSimilarity
from cbir_lightning.losses.pair_bce_loss import PairBCELoss
from cbir_lightning.losses.score_loss import ScoreLoss
from cbir_lightning.models.embedding_module import EmbeddingModule, check_objects
from cbir_lightning.models.param_groups import layer_param_groups
from cbir_lightning.models.test_time_scales import mean_over_scales

# the default batch loss as a class path (LightningCLI builds a new one); from Python, each module builds
# its own (a score loss is given its module's similarity, so it cannot be shared)
DEFAULT_BATCH_LOSS = lazy_instance(AllPairsBCELoss)


class SiameseModule(EmbeddingModule):
    """Args:
    net: the Siamese network.
    optimizer: optimizer factory (default Adam, lr 6e-5 as in the reference CBIR write-up).
    lr_scheduler: optional scheduler factory, stepped every ``lr_scheduler_interval``.
    layer_lr_multipliers / layer_weight_decay: per-layer learning-rate factors and L2 weights, in the
        order of the net's weight layers (Koch's per-layer settings); ``None`` keeps the optimizer's.
    batch_loss: loss on class batches (``class_path``): by default
        :class:`~cbir_lightning.losses.AllPairsBCELoss` (balanced BCE on every pair), e.g.
        :class:`~cbir_lightning.losses.InBatchSoftmaxLoss` (every positive pair against all the
        anchor's negatives).
    pair_loss: loss on pair batches (default :class:`~cbir_lightning.losses.PairBCELoss`, Koch's).
    class_loss: optional loss over ALL training classes, added to ``batch_loss`` on class batches with
        weight ``class_loss_weight`` (e.g. :class:`~cbir_lightning.losses.ProxySoftmaxLoss`, whose
        proxies are optimised with the net); a loss with ``build(num_classes, embedding_dim)`` and no
        classes yet is built before training from the DataModule's ``num_classes`` and the net's
        ``embedding_dim``. ``batch_loss: null`` trains with ``class_loss`` alone.
    miner: for class batches, a pytorch-metric-learning miner (``class_path``) whose pairs ``batch_loss``
        scores; null: every pair.
    test_time_scales: outside training, embed each image at these zooms and average
        (:func:`~cbir_lightning.models.test_time_scales.mean_over_scales`, e.g. ``[1.0, 0.9, 1.1]``); it
        applies wherever the module embeds (validation, ``oneshot``, ``index``, ``search``, export).
        None: one pass.
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
        batch_loss: nn.Module | None = DEFAULT_BATCH_LOSS,
        pair_loss: nn.Module | None = None,
        class_loss: nn.Module | None = None,
        class_loss_weight: float = 1.0,
        miner: nn.Module | None = None,
        test_time_scales: Sequence[float] | None = None,
    ) -> None:
        losses = {"batch_loss": batch_loss, "pair_loss": pair_loss, "class_loss": class_loss, "miner": miner}
        check_objects(net=net, **losses)
        objects = ["net", *(k for k, v in losses.items() if isinstance(v, nn.Module))]
        super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, objects=objects)
        self.net = net
        batch_loss = AllPairsBCELoss() if batch_loss is DEFAULT_BATCH_LOSS else batch_loss
        pair_loss = PairBCELoss() if pair_loss is None else pair_loss
        self.set_losses(batch_loss, miner, pair_loss, class_loss, class_loss_weight)
        head = ModelSimilarity(self.net.pair_logits, self.net.similarity)
        for loss in (self.loss, self.pair_loss, self.class_loss):
            if isinstance(loss, ScoreLoss):
                loss.use_similarity(head)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        scales = self.hparams.test_time_scales
        if self.training or not scales:
            return self.net.embed(images)
        return mean_over_scales(self.net.embed, images, scales)

    @property
    def input_size(self) -> int | None:
        return self.net.input_size

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        """Scores ``[nq, nd]``, higher = more similar: the net's own similarity."""
        return self.net.similarity(queries, database)

    @property
    def embedding_dim(self) -> int:
        return int(self.net.embedding_dim)

    def param_groups(self) -> list[dict]:
        """The net's groups (per layer, see ``layer_param_groups``) plus one for the losses' own
        parameters (e.g. class proxies), at the optimizer's settings."""
        groups = layer_param_groups(
            self.net, self.hparams.layer_lr_multipliers, self.hparams.layer_weight_decay
        )
        return self.with_loss_parameters(groups)
