"""``FitWhitening``: after ``fit``, learn a whitening (Lw or PCA) for the best checkpoint from the
DataModule's ``whitening_data()`` and save it beside it as ``<ckpt>.whitening.pt``.

The final validation of ``cbir-lightning fit`` (and later ``validate``/``test``/``predict --ckpt_path``,
``evaluate --ckpt``) then applies it (see ``GeMSiameseModule``)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

from cbir_lightning.callbacks.model_file import ModelFileWriter
from cbir_lightning.checkpoints import load_module
from cbir_lightning.whitening.fit import fit_and_save


class FitWhitening(Callback):
    """Args:
    kind: ``lw`` (learned from matching pairs) or ``pca``.
    dim: output dimension (leading components); null keeps the descriptor size.
    batch_size: images embedded at a time.
    """

    def __init__(self, kind: str = "lw", dim: int | None = None, batch_size: int = 128) -> None:
        self.kind, self.dim, self.batch_size = kind, dim, batch_size
        self.summary: dict | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best or trainer.interrupted:
            rank_zero_info("FitWhitening: no best checkpoint, no whitening fitted")
            return
        if trainer.is_global_zero:
            module = load_module(best).to(pl_module.device)
            self.summary = fit_and_save(
                module, best, trainer.datamodule, self.kind, self.dim, self.batch_size
            )
            rank_zero_info(f"FitWhitening: {self.summary}")
        trainer.strategy.barrier("fit_whitening")
        for callback in trainer.callbacks:  # a model file written before the whitening: again, with it
            if isinstance(callback, ModelFileWriter) and callback.ran:
                callback.write(trainer)
