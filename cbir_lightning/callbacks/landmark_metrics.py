"""Revisited Oxford / Paris mAP (Easy / Medium / Hard) of the model being trained, every validation epoch.

The callback owns a :class:`~data_modules.landmarks.LandmarksTestDataModule`: at the end of each
validation (and test) epoch it embeds the cropped queries and the database with the module's ``embed``
(each rank a shard, all-gathered), scores them with :func:`cbir_lightning.metrics.revisited_metrics`
(or ``original_metrics`` for the original ground truth) and logs ``val/<dataset>/mAP_E``, ``mAP_M``,
``mAP_H`` (original: ``val/<dataset>/mAP``). Use one callback per test set.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from cbir_lightning.metrics import original_metrics, revisited_metrics
from data_modules.landmarks import LandmarksTestDataModule
from data_modules.sampling.mining import embed_images

SHORT = {"easy": "E", "medium": "M", "hard": "H"}


def landmark_scores(embeddings: torch.Tensor, gnd) -> dict[str, float]:
    """``{"mAP_E", "mAP_M", "mAP_H", "mP@10_M", ...}`` (revisited) or ``{"mAP"}`` (original) from the
    embeddings of the queries followed by the database (the DataModule's item order)."""
    query, database = embeddings[: gnd.num_queries].float(), embeddings[gnd.num_queries :].float()
    if not gnd.revisited:
        return {"mAP": original_metrics(query, database, gnd.gnd)["mAP"]}
    out = {}
    for protocol, metrics in revisited_metrics(query, database, gnd.gnd).items():
        for key, value in metrics.items():
            out[f"{key}_{SHORT[protocol]}"] = value
    return out


class LandmarkMetrics(Callback):
    """Args:
    root / dataset / image_size / keep_aspect / crop_queries / num_workers: the test set (see
        :class:`~data_modules.landmarks.LandmarksTestDataModule`).
    every_n_epochs: score every n-th validation epoch (the set can be slow to embed).
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str = "roxford5k",
        image_size: int = 1024,
        keep_aspect: bool = True,
        crop_queries: bool = True,
        num_workers: int = 2,
        every_n_epochs: int = 1,
    ) -> None:
        self.data = LandmarksTestDataModule(
            root, dataset, image_size, keep_aspect, crop_queries, num_workers=num_workers
        )
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.last_metrics: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.data.setup(stage)  # a missing file stops the run before training, with one line

    def score(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Metrics of ``pl_module`` on the set (embeds with ``pl_module.embed`` in eval mode)."""
        self.data.setup()
        items = self.data.data
        images = _Images(items)
        indices = torch.arange(len(items))
        with torch.no_grad():
            embeddings = embed_images(
                pl_module,
                images,
                indices,
                batch_size=1 if self.data.hparams.keep_aspect else 16,
                num_workers=self.data.hparams.num_workers,
                describe=pl_module.embed,
            )
        return landmark_scores(embeddings.cpu(), self.data.gnd)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        metrics = self.score(pl_module)
        self.last_metrics = {f"{prefix}/{self.data.name}/{k}": float(v) for k, v in metrics.items()}
        for name, value in self.last_metrics.items():
            pl_module.log(name, value, sync_dist=False, prog_bar=name.endswith("mAP_M"))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")


class _Images(torch.utils.data.Dataset):
    """The images of ``(image, label, index)`` items."""

    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i][0]
