"""``Unfreeze``: the second stage of two-stage fine-tuning, in the same ``fit``.

Stage 1 trains the layers after a frozen backbone (``freeze: backbone``; with
:class:`~cbir_lightning.callbacks.FeatureCache`, from cached features). From epoch ``epoch`` on, when the run
has that many epochs (``--trainer.max_epochs`` turns the stage on and off), the backbone trains too, at the
optimizer's learning rate times ``backbone_lr_multiplier`` (its parameters are in the optimizer's backbone
group from the start, without gradients until now), BatchNorm statistics still frozen with
``freeze_batchnorm``, reading images again.

The switch happens where the next epoch's loaders are not made yet: at the end of epoch ``epoch - 1``
(before that epoch's checkpoint is written, so the checkpoint says so), or, in a run resumed from a
checkpoint whose next epoch is ``epoch`` or later, when the run starts. It makes the trainer reload its
loaders, which give images once the module has no frozen part, so a resumed run trains exactly as an
uninterrupted one.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from cbir_lightning.contracts import FrozenTrunkModel
from cbir_lightning.errors import CbirError


class Unfreeze(Callback):
    """Args:
    epoch: the first epoch (0-based) in which the backbone trains; 0: from the start.
    """

    def __init__(self, epoch: int = 1) -> None:
        if epoch < 0:
            raise CbirError(f"Unfreeze epoch must be 0 or more, got {epoch}")
        self.epoch = int(epoch)
        self.unfrozen = False
        self.next_epoch = 0  # the epoch a run resumed from the last saved state starts with

    def state_dict(self) -> dict:
        return {"unfrozen": self.unfrozen, "next_epoch": self.next_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.unfrozen = bool(state_dict.get("unfrozen", False))
        self.next_epoch = int(state_dict.get("next_epoch", 0))

    def _due(self, trainer: pl.Trainer, next_epoch: int) -> bool:
        """Whether the backbone trains in ``next_epoch`` (an epoch this run will train)."""
        more = trainer.max_epochs is None or trainer.max_epochs < 0 or next_epoch < trainer.max_epochs
        return not self.unfrozen and more and next_epoch >= self.epoch

    def _switch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, FrozenTrunkModel):
            raise CbirError(f"Unfreeze: {type(pl_module).__name__} has no frozen part to unfreeze")
        pl_module.unfreeze()
        trainer.reload_dataloaders_every_n_epochs = 1  # the next loaders give images
        self.unfrozen = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after a resumed checkpoint's callback states are loaded, before its optimizer state and loaders
        if self.unfrozen or self._due(trainer, self.next_epoch):
            self.unfrozen = False
            self._switch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.next_epoch = trainer.current_epoch + 1
        if self._due(trainer, self.next_epoch):
            self._switch(trainer, pl_module)
