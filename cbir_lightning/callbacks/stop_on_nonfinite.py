"""``StopOnNonFinite``: a diverging run stops at its first NaN/inf training loss, with one line naming the
step and the last good checkpoint, instead of spending its remaining epochs on NaN weights.

``cbir-lightning fit`` adds it to every run (configs need not list it).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from cbir_lightning.errors import CbirError


class NonFiniteLossError(CbirError):
    """The training loss became NaN or infinite."""


def _loss_value(outputs) -> float | None:
    """The training step's loss as a float (None when the step returned no loss)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return float(loss.detach())
    if isinstance(loss, (int, float)):
        return float(loss)
    return None


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint file the run has written (``last``, else ``best``), or None."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        paths += [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime).resolve()) if existing else None


class StopOnNonFinite(pl.Callback):
    """Raises ``NonFiniteLossError`` (a CbirError: the CLI prints it as one line) after the first training
    step whose loss is NaN or infinite; checkpoints already written are kept untouched."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = _loss_value(outputs)
        if loss is None or math.isfinite(loss):
            return
        ckpt = last_good_checkpoint(trainer)
        resume = (
            f"last good checkpoint: {ckpt} (resume with --ckpt_path {ckpt} after the fix)"
            if ckpt
            else "no checkpoint was written before it"
        )
        raise NonFiniteLossError(
            f"training loss is {loss} at step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {batch_idx}): the run diverged; lower the learning rate "
            f"(model.init_args.optimizer.init_args.lr) or check the data; {resume}"
        )
