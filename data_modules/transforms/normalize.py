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
