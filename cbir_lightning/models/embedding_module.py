"""``EmbeddingModule``: what every model family of the toolkit shares.

Validation, test and predict batches ``(images, labels, indices)`` give ``{"embeddings", "labels",
"indices"}`` (the retrieval callback and ``index`` turn them into metrics and search indexes), and the
optimizer and scheduler come from config factories (LightningCLI's ``OptimizerCallable``), built over
the subclass's ``param_groups()``; a group's ``lr_scale`` multiplies the optimizer's learning rate.
Subclasses define ``embed``, ``similarity`` and ``training_step``, and take an ``lr_scheduler_interval``
hyperparameter.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class EmbeddingModule(pl.LightningModule):
    optimizer_factory = None
    scheduler_factory = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def _embed_step(self, batch) -> dict[str, torch.Tensor]:
        images, labels, indices = batch
        return {"embeddings": self.embed(images), "labels": labels, "indices": indices}

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
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_scheduler_interval},
        }
