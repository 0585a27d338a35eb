"""``IndexedImages``: evaluation images held in memory, each item ``(image, label, index)``."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cbir_lightning.contracts import EvalBatch


class IndexedImages(Dataset):
    """Evaluation images as float tensors with their label and their index in the set."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> EvalBatch:
        return EvalBatch(self.images[i].float().div(255), self.labels[i], torch.tensor(i))
