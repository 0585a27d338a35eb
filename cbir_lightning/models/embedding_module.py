"""``EmbeddingModule``: the one training shell of the toolkit's model families (as OML's
``ExtractorModule``: a net, a loss, an optional miner, an optimizer).

Training: one ``training_step`` for every model, over every batch kind, each given to the loss as a
pytorch-metric-learning call ``loss(embeddings, labels, indices_tuple)``:

* :class:`~cbir_lightning.contracts.ClassBatch` / :class:`~cbir_lightning.contracts.FeatureBatch` (cached
  outputs of a frozen trunk): the miner's ``indices_tuple`` (None without a miner: every pair), plus
  ``class_loss_weight * class_loss`` when a loss over all training classes is set;
* :class:`~cbir_lightning.contracts.PairBatch`: ``first`` and ``second`` in separate forward passes (as two
  towers: BatchNorm statistics per side), ``[first; second]`` with the aligned pairs as ``indices_tuple``,
  scored by ``pair_loss`` (by default ``loss``);
* :class:`~cbir_lightning.contracts.TupleBatch` ``[[q, p, n_1..n_k], ...]``: images of equal size in one
  forward pass; the pairs (q, p) and (q, n_i) as ``indices_tuple``.

A model family is a subclass that declares its net and losses (``set_losses``) and says what the loss sees
(``training_embedding``: GeM's single-scale descriptor, DSH's relaxed codes; by default ``embed``) and how
it embeds and scores at evaluation (``embed``, ``similarity``, ``dot_product_similarity``: see
:class:`cbir_lightning.contracts.EmbeddingModel`).

Validation, test and predict batches ``(images, labels, indices)`` give ``{"embeddings", "labels",
"indices"}`` (the retrieval callback and ``index`` turn them into metrics and search indexes), and the
optimizer and scheduler come from config factories (LightningCLI's ``OptimizerCallable``), built over
the subclass's ``param_groups()``; a group's ``lr_scale`` multiplies the optimizer's learning rate.
Subclasses call ``super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, objects=...)`` first
(it saves the hyperparameters).

Hyperparameters: under the CLI they are the config (class paths), which rebuilds every object from a
checkpoint; objects passed from Python (``optimizer``, ``lr_scheduler`` and the subclass's ``objects``,
e.g. a net) are not saved (the weights are in the state dict). A checkpoint rebuilds its module from
itself alone: the hyperparameters it records name no pretrained source (``self_contained``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn

from cbir_lightning.contracts import (
    ClassBatch,
    ClassSizedLoss,
    FeatureBatch,
    FeatureEvalBatch,
    PairBatch,
    RetrievalData,
    TupleBatch,
)
from cbir_lightning.errors import CbirError
from cbir_lightning.inference import embed_grouped
from cbir_lightning.losses.contrastive import tuple_pairs
from cbir_lightning.losses.pairs import aligned_pairs, pairs_to_indices


def self_contained(hyper_parameters: dict, state_dict: dict) -> dict:
    """``hyper_parameters`` with the pretrained sources switched off, since the state dict holds those
    weights and the files may be absent (offline, another machine): backbone ``weights`` (also of a net
    given by ``class_path``, e.g. DSHModule's ``net``) and a whitening initialisation file
    (``whitening_init``, replaced by the layer's size). What every checkpoint records."""
    hparams = dict(hyper_parameters)
    net = hparams.get("net")
    if isinstance(net, dict) and (net.get("init_args") or {}).get("weights") is not None:
        hparams["net"] = {**net, "init_args": {**net["init_args"], "weights": None}}
    if hparams.get("weights") is not None:
        hparams["weights"] = None
    if hparams.get("whitening_init") is not None:
        hparams["whitening_init"] = None
        if "whiten.weight" in state_dict:
            hparams["whitening"] = int(state_dict["whiten.weight"].shape[0])
    return hparams


def check_objects(**objects) -> None:
    """CbirError (one line naming the argument) for an argument that must be an object (a loss, a miner,
    a net: ``class_path`` in configs) but is not, e.g. an older loss name."""
    for name, value in objects.items():
        if value is not None and not isinstance(value, nn.Module):
            raise CbirError(
                f"{name} is {value!r}, not an object: give it by class_path (e.g. {name}: {{class_path: "
                "cbir_lightning.losses.InBatchSoftmaxLoss}); a checkpoint saved with loss names loads "
                "converted: cbir-lightning convert --ckpt CKPT --out MODEL.model"
            )


class EmbeddingModule(pl.LightningModule):
    """Args:
    optimizer: optimizer factory over ``param_groups()``.
    lr_scheduler: optional scheduler factory, stepped every ``lr_scheduler_interval`` (``epoch`` or
        ``step``).
    objects: names of the subclass's arguments that are not saved as hyperparameters when given from
        Python (not itself a hyperparameter).
    """

    dot_product_similarity: bool = False

    def __init__(
        self,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
        objects: Sequence[str] = (),
    ) -> None:
        super().__init__()
        from_config = _given_hyperparameters.get() is not None
        unsaved = [] if from_config else ["optimizer", "lr_scheduler", *objects]
        self.save_hyperparameters(ignore=["objects", *unsaved])
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        # the training losses, set by the subclass (set_losses); modules once set, so not class attributes
        self.loss: nn.Module | None = None
        self.pair_loss: nn.Module | None = None
        self.class_loss: nn.Module | None = None
        self.miner: nn.Module | None = None
        self.class_loss_weight = 1.0

    def set_losses(
        self,
        loss: nn.Module | None,
        miner: nn.Module | None = None,
        pair_loss: nn.Module | None = None,
        class_loss: nn.Module | None = None,
        class_loss_weight: float = 1.0,
    ) -> None:
        """The training losses: ``loss`` on class, feature and tuple batches (after ``miner``, if any),
        ``pair_loss`` on pair batches (None: ``loss``), and an optional ``class_loss`` over all training
        classes added with weight ``class_loss_weight`` on class and feature batches."""
        if loss is None and class_loss is None:
            raise CbirError("a null loss (Koch: batch_loss) needs a class_loss (model.init_args.class_loss)")
        self.loss, self.miner, self.class_loss = loss, miner, class_loss
        self.pair_loss = loss if pair_loss is None else pair_loss
        self.class_loss_weight = float(class_loss_weight)

    @property
    def embedding_dim(self) -> int | None:
        """Descriptor size the net gives (a class loss's proxies are this wide); None when unknown."""
        return None

    def setup(self, stage: str) -> None:
        """Give a class loss without classes yet the DataModule's ``num_classes`` (before the optimizer
        is built, so its parameters are optimised)."""
        loss = self.class_loss
        if stage != "fit" or not isinstance(loss, ClassSizedLoss):
            return
        data = self.trainer.datamodule if self._trainer is not None else None
        num_classes = data.num_classes if isinstance(data, RetrievalData) else None
        if num_classes is None:
            if loss.num_classes is None:
                raise CbirError(
                    f"{type(loss).__name__} needs the number of training classes: use a DataModule with "
                    "num_classes (e.g. OmniglotDataModule) or set class_loss init_args num_classes"
                )
            return
        loss.build(int(num_classes), int(self.embedding_dim))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The checkpoint's hyperparameters rebuild the module without its pretrained sources
        (:func:`self_contained`)."""
        if isinstance(checkpoint.get("hyper_parameters"), dict):
            state = checkpoint.get("state_dict") or {}
            checkpoint["hyper_parameters"] = self_contained(checkpoint["hyper_parameters"], state)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """The descriptor hard-negative mining compares (GeM: single scale, no post-hoc whitening);
        by default :meth:`embed`."""
        return self.embed(images)

    @property
    def input_size(self) -> int | None:
        """The square image side the net was built for, or None when any size works."""
        return None

    # post-hoc whitening (see :mod:`cbir_lightning.whitening`): only GeM applies one
    post_whitening: dict | None = None

    def attach_whitening_file(self, checkpoint) -> bool:
        """Attach ``<checkpoint>.whitening.pt`` if the model applies post-hoc whitening; whether it did."""
        return False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings from cached outputs of the model's frozen part (``FrozenTrunkModel``)."""
        raise NotImplementedError(f"{type(self).__name__} has no frozen part to embed cached features of")

    def _embed_step(self, batch) -> dict[str, torch.Tensor]:
        inputs, labels, indices = batch
        embed = self.embed_features if isinstance(batch, FeatureEvalBatch) else self.embed
        return {"embeddings": embed(inputs), "labels": labels, "indices": indices}

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._embed_step(batch)

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._embed_step(batch)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self._embed_step(batch)

    # ---- training -------------------------------------------------------------------------------
    def training_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """What the loss sees of a batch of images; by default :meth:`embed` (in training mode)."""
        return self.embed(images)

    def training_features(self, features: torch.Tensor) -> torch.Tensor:
        """What the loss sees of cached trunk outputs; by default :meth:`embed_features`."""
        return self.embed_features(features)

    def training_logs(self) -> dict[str, torch.Tensor]:
        """Extra values logged every training step (e.g. GeM's p)."""
        return {}

    def training_step(
        self, batch: ClassBatch | FeatureBatch | PairBatch | TupleBatch, batch_idx: int
    ) -> torch.Tensor:
        if isinstance(batch, (ClassBatch, FeatureBatch)):
            inputs, labels = batch
            embed = self.training_embedding if isinstance(batch, ClassBatch) else self.training_features
            loss, size = self._class_loss(embed(inputs), labels), len(labels)
        elif isinstance(batch, PairBatch):
            if self.class_loss is not None:
                raise CbirError("class_loss needs class batches: set data.init_args.sampling: class_batches")
            first, second = self.training_embedding(batch.first), self.training_embedding(batch.second)
            embeddings = torch.cat([first, second])
            loss, size = self.pair_loss(embeddings, *aligned_pairs(batch.same)), len(batch.same)
        elif isinstance(batch, TupleBatch):
            loss, size = self._tuple_loss(batch.tuples), len(batch.tuples)
        else:
            raise TypeError(
                f"{type(self).__name__} trains on ClassBatch, FeatureBatch, PairBatch or TupleBatch, got "
                f"{type(batch).__name__}"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in self.training_logs().items():
            self.log(name, value, batch_size=size)
        return loss

    def _class_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``loss(embeddings, labels, miner(...)) + class_loss_weight * class_loss(embeddings, labels)``
        (either part may be absent; with both, each is logged)."""
        parts = []
        if self.loss is not None:
            mined = self.miner(embeddings, labels) if self.miner is not None else None
            parts.append(self.loss(embeddings, labels, mined))
        if self.class_loss is not None:
            class_part = self.class_loss(embeddings, labels)
            self.log("train/class_loss", class_part, batch_size=len(labels))
            parts.append(self.class_loss_weight * class_part)
            if self.loss is not None:
                self.log("train/batch_loss", parts[0], batch_size=len(labels))
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def _tuple_loss(self, tuples) -> torch.Tensor:
        """The loss on tuples ``[q, p, n_1..n_k]``: every image embedded (one pass per image size); q and
        p share a label, each negative has its own; the pairs (q, p) and (q, n_i) as ``indices_tuple``."""
        if self.loss is None:
            raise CbirError("tuple batches need a loss, not only a class_loss: set the model's batch_loss")
        embeddings = embed_grouped(self.training_embedding, [image for t in tuples for image in t])
        anchors, others, targets = (x.to(self.device) for x in tuple_pairs([len(t) for t in tuples]))
        labels = torch.arange(len(embeddings), device=self.device)
        labels[others[targets.bool()]] = anchors[targets.bool()]
        return self.loss(embeddings, labels, pairs_to_indices(anchors, others, targets))

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups; by default one group with every trainable parameter."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def with_loss_parameters(self, groups: list[dict]) -> list[dict]:
        """``groups`` plus one group (at the optimizer's settings) for the trainable parameters of the
        losses and miner (e.g. class proxies) that no group holds yet."""
        seen = {id(p) for g in groups for p in g["params"]}
        parts = (self.loss, self.pair_loss, self.class_loss, self.miner)
        extra = {id(p): p for m in parts if m is not None for p in m.parameters() if p.requires_grad}
        extra = [p for key, p in extra.items() if key not in seen]
        return groups + [{"params": extra}] if extra else groups

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.param_groups())
        for group in optimizer.param_groups:
            group["lr"] *= group.get("lr_scale", 1.0)
            group["initial_lr"] = group["lr"]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }
