"""Deep Supervised Hashing loss (Liu et al., CVPR 2016), as pure functions.

For relaxed codes ``b1, b2`` (k real values each) and ``s = 1`` for a similar pair, ``0`` otherwise::

    L = 1/2 s ||b1 - b2||^2 + 1/2 (1 - s) max(m - ||b1 - b2||^2, 0)
        + alpha (|| |b1| - 1 ||_1 + || |b2| - 1 ||_1)

with margin ``m = 2k`` by default (the paper's choice). The regulariser pulls every entry towards +-1, so
the sign codes used at retrieval time lose little. The loss is averaged over pairs.
"""

from __future__ import annotations

import torch


def dsh_pair_loss(
    b1: torch.Tensor, b2: torch.Tensor, same: torch.Tensor, margin: float | None = None, alpha: float = 0.01
) -> torch.Tensor:
    """Mean DSH loss of aligned pairs: codes ``[n, k]`` and ``same [n]`` in {0, 1}."""
    m = 2.0 * b1.shape[1] if margin is None else float(margin)
    s = same.to(b1.dtype)
    dist = (b1 - b2).pow(2).sum(1)
    pair = 0.5 * s * dist + 0.5 * (1 - s) * torch.clamp(m - dist, min=0)
    reg = (b1.abs() - 1).abs().sum(1) + (b2.abs() - 1).abs().sum(1)
    return (pair + alpha * reg).mean()


def dsh_all_pairs_loss(
    codes: torch.Tensor, labels: torch.Tensor, margin: float | None = None, alpha: float = 0.01
) -> torch.Tensor:
    """Mean DSH loss over every unordered pair ``i < j`` of a batch (the paper's online pair generation)."""
    i, j = torch.triu_indices(len(codes), len(codes), offset=1, device=codes.device)
    return dsh_pair_loss(codes[i], codes[j], labels[i] == labels[j], margin, alpha)
