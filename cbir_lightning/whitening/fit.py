"""Fit a whitening for a trained module from its DataModule's ``whitening_data()`` and save it beside
the checkpoint (used by the FitWhitening callback and ``cbir-lightning whiten``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from cbir_lightning.errors import CbirError
from cbir_lightning.inference import embed_dataset
from cbir_lightning.whitening.functional import KINDS, learn_lw, learn_pca
from cbir_lightning.whitening.io import save_whitening, whitening_path


def _descriptors(module, dataset: Dataset, batch_size: int = 128) -> torch.Tensor:
    """``module.embed`` (eval mode, no grad, without any attached post-hoc whitening, this process alone)
    of every ``(image, label, index)`` item, in dataset order, on the CPU."""
    embed = lambda x: module.embed(x.float())  # noqa: E731
    return embed_dataset(
        module, dataset, embed=embed, batch_size=batch_size, distributed=False, whitening=False
    ).cpu()


def datamodule_whitening_data(datamodule) -> tuple[Dataset, torch.Tensor]:
    data = datamodule.whitening_data()
    if data is None:
        raise CbirError(
            f"{type(datamodule).__name__} has no whitening_data(); whitening needs a DataModule that "
            "provides training images and matching pairs"
        )
    return data


def fit_whitening(
    module,
    dataset: Dataset,
    pairs: torch.Tensor,
    kind: str = "lw",
    dim: int | None = None,
    batch_size: int = 128,
) -> dict:
    """Lw (from ``pairs``) or PCA whitening of the module's descriptors of ``dataset``."""
    if kind not in KINDS:
        raise CbirError(f"unknown whitening kind {kind!r}; choose lw or pca")
    descriptors = _descriptors(module, dataset, batch_size)
    if dim is not None and not 0 < dim <= descriptors.shape[1]:
        raise CbirError(
            f"whitening dim {dim} must be between 1 and the descriptor size {descriptors.shape[1]}"
        )
    if kind == "pca":
        return learn_pca(descriptors, dim)
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise CbirError(
            "learned whitening (lw) needs matching pairs; the DataModule gave none (try --kind pca)"
        )
    return learn_lw(descriptors, pairs, dim)


def fit_and_save(module, checkpoint: str | Path, datamodule, kind="lw", dim=None, batch_size=128) -> dict:
    """Fit from ``datamodule.whitening_data()`` and write ``<checkpoint>.whitening.pt``; a summary."""
    dataset, pairs = datamodule_whitening_data(datamodule)
    whitening = fit_whitening(module, dataset, pairs, kind, dim, batch_size)
    path = save_whitening(whitening_path(checkpoint), whitening)
    return {"whitening": str(path), **summary(whitening, kind, dataset, pairs)}


def summary(whitening: dict, kind: str, dataset: Dataset, pairs) -> dict:
    """What ``whiten`` prints of a fitted whitening: kind, dim, input_dim, images, pairs."""
    return {
        "kind": kind,
        "dim": int(whitening["projection"].shape[0]),
        "input_dim": int(whitening["projection"].shape[1]),
        "images": len(dataset),
        "pairs": int(len(pairs)),
    }
