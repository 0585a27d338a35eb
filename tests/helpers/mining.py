"""Synthetic clustered images of two sizes and a small conv stub with ``embed``, for the mining tests."""

from __future__ import annotations

import torch
from torch import nn


class ImageSet(torch.utils.data.Dataset):
    """Random images of two sizes whose colour depends on the cluster."""

    def __init__(self, clusters: torch.Tensor, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = [
            (torch.rand(3, 6, 8 if i % 3 else 5, generator=gen) + 0.3 * (int(c) % 5))
            for i, c in enumerate(clusters)
        ]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


class Stub(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)

    def embed(self, x):
        return nn.functional.normalize(self.bn(self.conv(x)).mean((2, 3)), dim=1)

    descriptor = embed  # what mining compares (an EmbeddingModule's default)
    post_whitening = None  # no post-hoc whitening attached (an EmbeddingModule's default)


def synthetic(n=40, clusters=8):
    labels = torch.arange(n) % clusters
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]][::3]
    q, p = torch.tensor(pairs).T
    return ImageSet(labels), labels, q, p
