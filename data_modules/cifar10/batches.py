"""torchvision's CIFAR-10 files (``cifar-10-batches-py/``), read with a data-only unpickler.

Each batch is a pickled dict with ``data``: uint8 ``[N, 3072]`` (a row holds the R, G and B planes of a
32 x 32 image, row-major) and ``labels``: ``N`` ints in 0..9; ``batches.meta`` has ``label_names``.
Keys are bytes in the official (Python 2) files and str when re-pickled by Python 3: both are accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cbir_lightning.errors import CbirError
from data_modules.io.pickles import DataUnpickler

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _field(batch: dict, name: str, path: Path):
    for key in (name, name.encode()):
        if key in batch:
            return batch[key]
    raise CbirError(f"{path}: no '{name}' field (keys: {sorted(map(str, batch))}); re-download CIFAR-10")


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> images uint8 ``[N, 3, 32, 32]``, labels ``[N]``."""
    if not path.is_file():
        raise CbirError(
            f"{path} not found; re-download CIFAR-10 (download: true) or use the image-folder layout"
        )
    try:
        with path.open("rb") as f:
            batch = DataUnpickler(f, path).load()
    except CbirError:
        raise
    except Exception as err:  # truncated or not a pickle
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CbirError(f"{path} is not a readable CIFAR-10 batch ({reason}); re-download CIFAR-10") from err
    if not isinstance(batch, dict):
        raise CbirError(f"{path}: expected a pickled dict, got {type(batch).__name__}; re-download CIFAR-10")
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, "labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise CbirError(
            f"{path}: data {data.dtype} {data.shape} with {len(labels)} labels, expected uint8 [N, 3072] "
            "and N labels; re-download CIFAR-10"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise CbirError(f"{path}: labels outside 0..9; re-download CIFAR-10")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_cifar10_batches(folder: Path) -> dict:
    """``{"train": (images, labels), "test": (images, labels), "classes": [names]}``."""
    parts = [read_batch(folder / name) for name in TRAIN_BATCHES]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    classes = list(CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        with meta.open("rb") as f:
            names = DataUnpickler(f, meta).load()
        found = names.get("label_names", names.get(b"label_names")) if isinstance(names, dict) else None
        if found is not None and len(found) == len(CLASSES):
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in found]
    return {"train": train, "test": read_batch(folder / TEST_BATCH), "classes": classes}
