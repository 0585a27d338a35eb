"""``PhotoViews``: photo files (optionally cropped to a box) as a
:class:`~cbir_lightning.contracts.ViewSource`, the items a feature cache stores views of.

The evaluation view is the DataModule's (``eval_view``: e.g. the centre square); an augmented view is a
random resized crop and flip (:func:`~data_modules.transforms.crops.random_resized_crop`, the
training photos' augmentation) drawn from the generator the cache gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from data_modules.datasets.photo_files import Box, load_cropped
from data_modules.transforms.crops import CROP_RATIO, CROP_SCALE, random_resized_crop


class PhotoViews:
    """Args:
    paths / labels / boxes: the photos, their class indices and optional crop boxes.
    image_size: side of the square views.
    eval_view: PIL photo -> evaluation tensor; to_tensor: square PIL view -> tensor.
    recipe: what the views depend on besides the files (size, normalisation, ...); the augmentation's
        ranges are added here.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: torch.Tensor,
        boxes: Sequence[Box] | None,
        image_size: int,
        eval_view: Callable[[Image.Image], torch.Tensor],
        to_tensor: Callable[[Image.Image], torch.Tensor],
        recipe: dict,
    ) -> None:
        self.paths, self.labels = list(paths), labels
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        self.image_size, self.eval_view, self.to_tensor = int(image_size), eval_view, to_tensor
        self.recipe = {
            **recipe,
            "augment": {"crop_scale": list(CROP_SCALE), "crop_ratio": list(CROP_RATIO), "flip": 0.5},
        }

    def __len__(self) -> int:
        return len(self.paths)

    def sources(self, i: int) -> tuple:
        box = self.boxes[i]
        if box is None:
            return (self.paths[i],)
        return (self.paths[i], box) if isinstance(box, Path) else (self.paths[i], repr(tuple(box)).encode())

    def view(self, i: int, generator: torch.Generator | None) -> torch.Tensor:
        image = load_cropped(self.paths[i], self.boxes[i])
        if generator is None:
            return self.eval_view(image)
        return self.to_tensor(random_resized_crop(image, self.image_size, generator))
