"""Koch, Zemel and Salakhutdinov (2015) Siamese network: a shared conv tower, a sigmoid embedding, and a
similarity head ``sigmoid(w . |e1 - e2| + b)`` over the component-wise L1 distance.

Defaults are the paper's (105 px input, conv 64@10, 128@7, 128@4, 256@4, fc 4096); sizes, widths,
padding and BatchNorm are arguments so that the same class runs practically on a CPU.
``head_init="negative_l1"`` starts the head as a negative L1 distance instead of a random direction;
``head_weights="nonpositive"`` keeps it a weighted L1 distance (Koch's head is unconstrained: with few
training alphabets it learns positive weights that reward differences and transfer worse).
``channels_last`` (default) keeps the conv weights and activations in NHWC, where oneDNN's CPU kernels
run about 25% faster per training step (max-pooling 8x); the numbers are the same up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.models.l1_scores import weighted_l1_scores


class KochSiameseNet(nn.Module):
    def __init__(
        self,
        input_size: int = 105,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 128, 128, 256),
        kernel_sizes: Sequence[int] = (10, 7, 4, 4),
        padding: int = 0,
        batch_norm: bool = False,
        embedding_dim: int = 4096,
        head_init: Literal["default", "negative_l1"] = "default",
        head_weights: Literal["free", "nonpositive"] = "free",
        score_chunk_elements: int = 2**25,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if len(channels) != len(kernel_sizes):
            raise ValueError("channels and kernel_sizes must have the same length")
        layers: list[nn.Module] = []
        width = in_channels
        for i, (out, k) in enumerate(zip(channels, kernel_sizes, strict=True)):
            layers.append(nn.Conv2d(width, out, k, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            width = out
        self.features = nn.Sequential(*layers)
        try:
            with torch.no_grad():
                flat = self.features(torch.zeros(1, in_channels, input_size, input_size)).numel()
        except RuntimeError as err:  # e.g. image_size 0, or too small for the kernels and poolings
            raise CbirError(
                f"input_size {input_size} is too small for the Koch net's convolutions (kernels "
                f"{list(kernel_sizes)}, a pooling between each): give the images more pixels"
            ) from err
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(flat, embedding_dim), nn.Sigmoid())
        self.head = nn.Linear(embedding_dim, 1)
        if head_weights not in ("free", "nonpositive"):
            raise ValueError(f"head_weights must be 'free' or 'nonpositive', got {head_weights!r}")
        self.head_weights = head_weights
        if head_init == "negative_l1":
            # start as "similar = small L1 distance": a useful metric from step one (faster on small budgets)
            start = -10.0 / embedding_dim
            # nonpositive weights are -softplus(raw): store the raw value that gives ``start``
            raw = math.log(math.expm1(-start)) if head_weights == "nonpositive" else start
            nn.init.constant_(self.head.weight, raw)
            nn.init.constant_(self.head.bias, 1.0)
        elif head_init != "default":
            raise ValueError(f"head_init must be 'default' or 'negative_l1', got {head_init!r}")
        self.input_size, self.embedding_dim = input_size, embedding_dim
        self.score_chunk_elements = score_chunk_elements
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.features.to(memory_format=self.memory_format)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, c, h, w]`` images -> ``[n, embedding_dim]`` sigmoid embeddings."""
        return self.embedding(self.features(images.contiguous(memory_format=self.memory_format)))

    def head_weight(self) -> torch.Tensor:
        """Per-dimension weights ``[d]`` of the L1 head; ``nonpositive``: ``-softplus(raw)``, so that
        the score can only fall as embeddings move apart in any dimension (a weighted L1 distance)."""
        raw = self.head.weight.squeeze(0)
        return -F.softplus(raw) if self.head_weights == "nonpositive" else raw

    def l1_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w [d], b [])`` of the score ``sum_k w_k |q_k - x_k| + b`` (see ``WeightedL1Net``)."""
        return self.head_weight(), self.head.bias[0]

    def pair_logits(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """Logit of "same class" for aligned pairs of embeddings ``[n, d]`` -> ``[n]``."""
        weight, bias = self.l1_head()
        return torch.abs(e1 - e2) @ weight + bias

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        """All-pairs logits ``[nq, nd]`` (higher = more similar), chunked to bound memory."""
        weight, bias = self.l1_head()
        return weighted_l1_scores(queries, database, weight, self.score_chunk_elements) + bias

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.pair_logits(self.embed(x1), self.embed(x2))
