"""``ArrayViews``: images held in memory (uint8 ``[n, C, S, S]``) as a
:class:`~cbir_lightning.contracts.ViewSource`, the items a feature cache stores views of.

The evaluation view is the image itself, normalised; an augmented view is a random resized crop and flip
of it (:func:`~data_modules.transforms.crops.random_resized_crop`) drawn from the generator the
cache gives. An item is named by its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from data_modules.transforms.crops import CROP_RATIO, CROP_SCALE, random_resized_crop
from data_modules.transforms.normalize import normalize


class ArrayViews:
    """Args:
    images / labels: uint8 ``[n, C, S, S]`` images and their class indices.
    mean / std: normalisation of the views (None: [0, 1] pixels).
    recipe: what the views depend on besides the pixels (size, resize, ...); the augmentation is added.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        recipe: dict,
    ) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std
        self.recipe = {
            **recipe,
            "mean": None if mean is None else list(mean),
            "std": None if std is None else list(std),
            "augment": {"crop_scale": list(CROP_SCALE), "crop_ratio": list(CROP_RATIO), "flip": 0.5},
        }

    def __len__(self) -> int:
        return len(self.images)

    def sources(self, i: int) -> tuple:
        return (self.images[i].numpy().tobytes(),)

    def view(self, i: int, generator: torch.Generator | None) -> torch.Tensor:
        pixels = self.images[i]
        if generator is not None:
            image = Image.fromarray(pixels.permute(1, 2, 0).squeeze(-1).numpy())
            crop = np.asarray(random_resized_crop(image, pixels.shape[-1], generator))
            pixels = (
                torch.from_numpy(crop.copy()).reshape(pixels.shape[1], pixels.shape[2], -1).permute(2, 0, 1)
            )
        x = pixels.float().div(255)
        return normalize(x, self.mean, self.std) if self.mean is not None else x
