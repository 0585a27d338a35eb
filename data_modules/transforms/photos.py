"""Colour photos for landmark retrieval: decode, resize (longer side or square), ImageNet-normalise.

``PhotoTransform`` is the evaluation and training transform of the SfM and Oxford/Paris DataModules.
With ``keep_aspect`` it follows cirtorch's ``imresize`` (``PIL.Image.thumbnail``): the longer side
becomes ``image_size`` and images already smaller are left as they are; otherwise the photo is
resized to ``image_size`` x ``image_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbir_lightning.errors import CbirError
from data_modules.datasets.image_folders import read_image
from data_modules.transforms.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize


def load_photo(path: str | Path, what: str = "image") -> Image.Image:
    """Decode ``path`` as RGB; CbirError naming the file if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"{what} {path} not found; check the data root and that the image tree is complete")
    return read_image(path, "RGB")


class PhotoTransform:
    """PIL image -> normalised float tensor ``[3, h, w]`` (picklable, so DataLoader workers can use it)."""

    def __init__(
        self,
        image_size: int,
        keep_aspect: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if image_size < 1:
            raise CbirError(f"image_size must be a positive number of pixels, got {image_size}")
        self.image_size, self.keep_aspect = int(image_size), keep_aspect
        self.mean, self.std = tuple(mean), tuple(std)

    def preprocess_spec(self, resize: str | None = None) -> dict:
        """This transform as a preprocessing spec (``cbir_lightning.export.preprocess``): ``resize`` names
        the resize (default ``fit`` when the aspect is kept, else ``bilinear``)."""
        return {
            "mode": "RGB",
            "invert": False,
            "resize": resize or ("fit" if self.keep_aspect else "bilinear"),
            "size": int(self.image_size),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    def resize(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if self.keep_aspect:
            image = image.copy()
            image.thumbnail((self.image_size, self.image_size), Image.Resampling.LANCZOS)
            return image
        return image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(self.resize(image), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
        return normalize(tensor, self.mean, self.std)
