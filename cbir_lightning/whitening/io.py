"""Whitening files: ``Path(ckpt).with_suffix(".whitening.pt")`` beside a checkpoint, a torch file of
``{"kind": "lw"|"pca", "mean": Tensor[D], "projection": Tensor[d, D]}``, written atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from cbir_lightning.atomic import atomic_file
from cbir_lightning.errors import CbirError
from cbir_lightning.whitening.functional import KINDS

# the key of a checkpoint dict that carries its whitening (a model file read as a checkpoint: validate,
# test and predict of ``--ckpt_path X.model``); the module attaches it as the whitening file beside one
CHECKPOINT_KEY = "cbir_whitening"


def whitening_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".whitening.pt")


def save_whitening(path: str | Path, whitening: dict) -> Path:
    """Write ``whitening`` to ``path`` atomically (:func:`~cbir_lightning.atomic.atomic_file`)."""
    path = Path(path)
    data = {
        "kind": str(whitening["kind"]),
        "mean": whitening["mean"].detach().cpu().contiguous(),
        "projection": whitening["projection"].detach().cpu().contiguous(),
    }
    with atomic_file(path) as tmp:
        torch.save(data, tmp)
    return path


def load_whitening(path: str | Path) -> dict:
    """A whitening file; CbirError naming the file and the fix when it is missing or malformed."""
    path = Path(path)
    fix = "fit it again with `cbir-lightning whiten --ckpt CKPT --config CONFIG`"
    if not path.is_file():
        raise CbirError(f"whitening file {path} not found; {fix}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise CbirError(f"whitening file {path} is unreadable ({reason}); {fix}") from err
    ok = (
        isinstance(data, dict)
        and data.get("kind") in KINDS
        and isinstance(data.get("mean"), torch.Tensor)
        and isinstance(data.get("projection"), torch.Tensor)
        and data["mean"].ndim == 1
        and data["projection"].ndim == 2
        and data["projection"].shape[1] == data["mean"].shape[0]
    )
    if not ok:
        raise CbirError(
            f"whitening file {path} is not a whitening "
            f"(expected kind lw|pca, mean [D], projection [d, D]); {fix}"
        )
    return data
