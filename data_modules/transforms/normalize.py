"""Per-channel normalisation of image tensors, and a dataset wrapper that applies it to every image of an
item (pairs, class batches and evaluation items alike), so the samplers stay unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel on float images ``[..., C, H, W]``."""
    m = torch.as_tensor(mean, dtype=images.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype).view(-1, 1, 1)
    if m.shape[0] != images.shape[-3]:
        raise ValueError(f"{len(mean)} normalisation channels for {images.shape[-3]}-channel images")
    return (images - m) / s


def display_pixels(
    image: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """The original pixels of one evaluation tensor ``[C, H, W]``: ``x * std + mean`` per channel (when
    ``mean``/``std`` are set), clamped to [0, 1], as uint8 RGB ``[3, H, W]`` (``round(255 x)``; one channel
    repeated). Inverts :func:`normalize` up to rounding."""
    x = image.detach().float().cpu()
    if mean is not None:
        m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
        x = x * s + m
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class NormalizedItems(Dataset):
    """``dataset[i]`` with every float tensor of 3 or more dims (an image or a batch of them) normalised."""

    def __init__(self, dataset: Dataset, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.dataset, self.mean, self.std = dataset, mean, std

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if self.mean is None:
            return item
        values = [
            normalize(x, self.mean, self.std) if x.is_floating_point() and x.ndim >= 3 else x for x in item
        ]
        # a named batch (cbir_lightning.contracts) keeps its type
        return type(item)(*values) if hasattr(item, "_fields") else tuple(values)
