"""Datasets over photo files, decoded on access (workers decode in parallel).

* :class:`PhotoFiles`: ``ds[i]`` is image ``i`` as a tensor; ``ds[(q, p, n1, ...)]`` is the list of those
  images (a training tuple, see :mod:`data_modules.sampling.tuples`).
* :class:`LabelledPhotos`: ``(image, label, index)`` evaluation items, optionally cropped to a box first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from cbir_lightning.contracts import EvalBatch
from data_modules.stanford_dogs.files import read_box
from data_modules.transforms.photos import load_photo


class PhotoFiles(Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> torch.Tensor:
        return self.transform(load_photo(self.paths[int(i)]))

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            return [self.image(i) for i in key]
        return self.image(key)


Box = Sequence[float] | Path | None


def load_cropped(path: Path, box: Box = None) -> Image.Image:
    """Photo ``path`` as RGB, cropped to ``box``: ``(x1, y1, x2, y2)`` pixels, or a PASCAL VOC annotation
    file whose largest box is used (clamped to the image, see :func:`read_box`), or None (whole photo)."""
    image = load_photo(path)
    if box is None:
        return image
    if isinstance(box, Path):
        return image.crop(read_box(box, *image.size))
    return image.crop(tuple(float(v) for v in box))


class LabelledPhotos(Dataset):
    """``(image, label, index)``; ``boxes[i]``, if given, crops image ``i`` before the transform
    (revisited Oxford/Paris query boxes, Stanford Dogs annotation files; see :func:`load_cropped`)."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: torch.Tensor,
        transform: Callable,
        boxes: Sequence[Box] | None = None,
    ) -> None:
        self.paths, self.labels, self.transform = list(paths), labels, transform
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> EvalBatch:
        image = self.transform(load_cropped(self.paths[i], self.boxes[i]))
        return EvalBatch(image, self.labels[i], torch.tensor(i))
