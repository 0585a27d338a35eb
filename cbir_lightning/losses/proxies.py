"""Softmax over every training class, each class represented by a learned proxy embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def proxy_softmax(
    scores: torch.Tensor, labels: torch.Tensor, scale: float = 1.0, margin: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of each sample's class among all classes, from ``scores [B, C]`` (sample-to-proxy
    similarities, higher = more similar) and ``labels [B]`` in ``0..C-1``:
    ``mean_i -log(exp(s * (S_iy - m)) / (exp(s * (S_iy - m)) + sum_{c != y} exp(s * S_ic)))``.

    ``scale`` ``s`` and an additive ``margin`` ``m`` on the true class (CosFace, Wang et al. 2018); with
    cosine scores and ``m = 0`` it is the normalized softmax of Zhai and Wu (2019).
    """
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(
            f"labels must lie in 0..{scores.shape[1] - 1}, got {int(labels.min())}..{int(labels.max())}"
        )
    target = F.one_hot(labels, scores.shape[1]).to(scores.dtype)
    return F.cross_entropy(scale * (scores - margin * target), labels)
