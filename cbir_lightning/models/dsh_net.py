"""The small convolutional net of Deep Supervised Hashing (Liu et al., CVPR 2016) for 32 px images:
three 5x5 conv layers (32, 32, 64 channels) with 3x3 stride-2 pooling, a 500-unit hidden layer and a
linear layer with one output per bit (the relaxed, real-valued code)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DSHNet(nn.Module):
    def __init__(
        self,
        bits: int = 12,
        in_channels: int = 3,
        input_size: int = 32,
        channels: Sequence[int] = (32, 32, 64),
        hidden: int = 500,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be positive, got {bits}")
        layers: list[nn.Module] = []
        width = in_channels
        for i, out in enumerate(channels):
            layers.append(nn.Conv2d(width, out, 5, padding=2, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            pool = nn.MaxPool2d if i == 0 else nn.AvgPool2d
            layers.append(pool(3, stride=2, padding=1))
            width = out
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, bits)
        )
        self.bits = bits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, c, h, w]`` -> relaxed codes ``[n, bits]``."""
        return self.head(self.features(images))

    def param_groups(self) -> list[dict]:
        """One group: every trainable parameter, at the optimizer's settings."""
        return [{"params": [x for x in self.parameters() if x.requires_grad]}]
