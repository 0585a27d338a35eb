"""Shared helpers of the search tests: a folder of real photos and index building."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from helpers.paths import SHARED_DATA

LANDMARKS = SHARED_DATA / "landmarks"


def photo_folder(dest: Path, count: int = 20) -> Path:
    """``dest`` with up to ``count`` real landmark photos (oxford5k in the top folder, sacre_coeur below)."""
    sources = sorted((LANDMARKS / "oxford5k_images").glob("*.jpg")) + sorted(
        (LANDMARKS / "sacre_coeur").glob("*.jpg")
    )
    if not sources:
        import pytest

        pytest.skip(f"landmark photos not found under {LANDMARKS}")
    dest.mkdir(parents=True, exist_ok=True)
    for src in sources[:count]:
        target = dest / ("sacre_coeur" if src.parent.name == "sacre_coeur" else "") / src.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(src, target)
    return dest


def other_checkpoint(ckpt: Path, dest: Path) -> Path:
    """A copy of ``ckpt`` with one weight changed: another model with the same architecture."""
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(k for k, v in data["state_dict"].items() if v.is_floating_point())
    data["state_dict"][key] = data["state_dict"][key] + 0.5
    torch.save(data, dest)
    return dest


def reference_vectors(ckpt: Path, files: list[Path]) -> torch.Tensor:
    """Embeddings computed directly: the DataModule's eval_transform and the module's embed, one by one."""
    from PIL import Image

    from cbir_lightning.checkpoints import load_module
    from cbir_lightning.search.model import datamodule_from_checkpoint

    module, transform = load_module(ckpt), datamodule_from_checkpoint(ckpt).eval_transform
    with torch.no_grad():
        return torch.cat([module.embed(transform(Image.open(f))[None]) for f in files])
