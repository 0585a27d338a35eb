"""Random resized crops of PIL photos, drawn from a ``torch.Generator`` (the same generator state always
gives the same crop, whichever worker or rank draws it)."""

from __future__ import annotations

import math

import torch
from PIL import Image


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


CROP_SCALE = (0.35, 1.0)  # area of a random resized crop
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio


def random_resized_crop(
    image: Image.Image, size: int, gen: torch.Generator, scale=CROP_SCALE, ratio=CROP_RATIO
) -> Image.Image:
    """A crop of ``scale`` of the area and ``ratio`` aspect (10 tries; else the central square), resized
    to ``size`` x ``size``, mirrored with probability 1/2."""
    width, height = image.size
    box = None
    for _ in range(10):
        area = width * height * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(torch.randint(width - w + 1, (), generator=gen))
            y0 = int(torch.randint(height - h + 1, (), generator=gen))
            box = (x0, y0, x0 + w, y0 + h)
            break
    if box is None:
        side = min(width, height)
        box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
    crop = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if float(torch.rand((), generator=gen)) < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop
