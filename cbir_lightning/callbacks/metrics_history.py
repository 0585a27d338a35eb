"""``MetricsHistory``: every validation epoch of a ``fit`` as one JSON line in
``<default_root_dir>/metrics.jsonl`` (``{"epoch", "step", "mAP", "oneshot_20way", ...}``, metric prefixes
stripped), a local record of the per-epoch curve beside the W&B run, read by plain Python.

The file is rewritten atomically each epoch; a resumed run replaces the lines of the epochs it repeats, so
each epoch appears once. Only rank 0 writes; sanity-check validation is not recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from cbir_lightning.atomic import atomic_file


def read_history(path: str | Path) -> list[dict]:
    """The lines of a ``metrics.jsonl`` (one dict per epoch, in epoch order)."""
    lines = Path(path).read_text().splitlines()
    return sorted((json.loads(line) for line in lines if line.strip()), key=_epoch)


class MetricsHistory(pl.Callback):
    """Args:
    filename: the file, relative to ``trainer.default_root_dir``.
    prefix: which logged metrics are recorded (``val/``), written without the prefix.
    """

    def __init__(self, filename: str = "metrics.jsonl", prefix: str = "val/") -> None:
        self.filename, self.prefix = filename, prefix

    def path(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.filename

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(self.prefix):
                row[key[len(self.prefix) :]] = round(float(value), 6)
        path = self.path(trainer)
        rows = [r for r in (read_history(path) if path.is_file() else []) if r["epoch"] != row["epoch"]]
        with atomic_file(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in sorted([*rows, row], key=_epoch)))


def _epoch(row: dict) -> int:
    return row["epoch"]
