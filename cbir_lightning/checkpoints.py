"""Load a trained LightningModule back from a checkpoint, with one-line errors for bad files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch

from cbir_lightning.errors import CbirError


def check_checkpoint(path: str | Path) -> Path:
    """The path if it looks like a complete checkpoint; CbirError naming it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(
            f"checkpoint {path} not found; pass the .ckpt written by `cbir-lightning fit` "
            "(see the 'checkpoint' field of its last line)"
        )
    if not zipfile.is_zipfile(path):
        raise CbirError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint; "
            "use another checkpoint or train again"
        )
    return path


def load_module(path: str | Path, map_location: str = "cpu") -> pl.LightningModule:
    """Rebuild the module saved by a ``cbir-lightning fit`` run (its class and arguments are in the file)."""
    from cbir_lightning.models.siamese_module import SiameseModule

    path = check_checkpoint(path)
    try:
        module = SiameseModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except (RuntimeError, KeyError, EOFError, ValueError, TypeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise CbirError(
            f"cannot load checkpoint {path} ({reason}); use a checkpoint written by `cbir-lightning fit`"
        ) from err
    module.eval()
    return module


def checkpoint_datamodule_args(path: str | Path) -> dict:
    """The DataModule arguments the checkpoint was trained with (empty if none were saved)."""
    ckpt = torch.load(check_checkpoint(path), map_location="cpu", weights_only=True)
    return dict(ckpt.get("datamodule_hyper_parameters", {}))
