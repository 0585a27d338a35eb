"""``ModelFileWriter``: every checkpoint of a ``fit`` records the DataModule's preprocessing as data, and at
the end of ``fit`` the best checkpoint is written as a model file (``best.model`` beside it,
:mod:`cbir_lightning.model_file`), what ``index``/``search`` and the Python API load without the
DataModule."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import RECORD_KEY, ModelFile


class ModelFileWriter(Callback):
    """Args:
    filename: the model file written in the best checkpoint's folder at the end of ``fit`` (rank 0).
    """

    def __init__(self, filename: str = "best.model") -> None:
        self.filename = filename
        self.written: Path | None = None  # on rank 0
        self.ran = False  # on every rank: FitWhitening asks it to write again (a DDP barrier)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        """Record the DataModule's ``preprocess_spec()`` (if it has one) in the checkpoint, so a model file
        is made from the checkpoint alone (``ModelFile.from_checkpoint``)."""
        describe = getattr(trainer.datamodule, "preprocess_spec", None)
        spec = describe() if describe is not None else None
        if spec is not None:
            checkpoint[RECORD_KEY] = spec

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        """Write the best checkpoint's model file on rank 0 (with its whitening file, if one is beside
        it: ``FitWhitening`` calls this again once it has written one); a model that cannot be written
        (no preprocessing spec) is a warning, not a failed fit."""
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best or trainer.interrupted:
            rank_zero_info("ModelFileWriter: no best checkpoint, no model file written")
            return
        self.ran = True
        if trainer.is_global_zero:
            try:  # rebuilding the module draws initial weights: the run's generator is left as it was
                with torch.random.fork_rng(devices=[]):
                    model_file = ModelFile.from_checkpoint(best)
                self.written = model_file.save(Path(best).parent / self.filename)
                rank_zero_info(f"ModelFileWriter: {self.written}")
            except CbirError as err:  # e.g. a DataModule that cannot describe its preprocessing
                rank_zero_warn(f"ModelFileWriter: no model file written ({err})")
        trainer.strategy.barrier("model_file")
