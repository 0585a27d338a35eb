"""``EmbeddingModule``: what every model family of the toolkit shares.

Validation, test and predict batches ``(images, labels, indices)`` give ``{"embeddings", "labels",
"indices"}`` (the retrieval callback and ``index`` turn them into metrics and search indexes), and the
optimizer and scheduler come from config factories (LightningCLI's ``OptimizerCallable``), built over
the subclass's ``param_groups()``; a group's ``lr_scale`` multiplies the optimizer's learning rate.
Subclasses call ``super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, objects=...)`` first
(it saves the hyperparameters), define ``embed``, ``similarity``, ``dot_product_similarity`` (see
:class:`cbir_lightning.contracts.EmbeddingModel`) and ``training_step``.

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

from cbir_lightning.contracts import FeatureEvalBatch
from cbir_lightning.errors import CbirError


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

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups; by default one group with every trainable parameter."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

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
