"""The contrastive loss of Radenović, Tolias and Chum, as cirtorch computes it (pure functions).

For a pair at Euclidean distance ``d`` with target ``y`` (1 matching, 0 non-matching)::

    loss = 0.5 * y * d**2 + 0.5 * (1 - y) * max(0, margin - d)**2

summed (not averaged) over all pairs of the batch; ``margin`` 0.7 in the paper (0.85 in the later
recipe). On tuples ``(q, p, n_1..n_k)`` the pairs are ``(q, p)`` with y = 1 and ``(q, n_i)`` with
y = 0. The distance is ``sqrt(sum((a - b + eps)**2))`` as in cirtorch (``eps`` keeps the gradient of
``sqrt`` finite for identical vectors).

pytorch-metric-learning's ``ContrastiveLoss`` differs: it uses ``d`` and ``max(0, margin - d)``
without squares or the 0.5 factors, default margins 0 (positive) and 1 (negative), and instead of
summing it averages the non-zero positive terms and the non-zero negative terms separately
(``AvgNonZeroReducer``) and adds the two means; select it with
``loss: {class_path: pytorch_metric_learning.losses.ContrastiveLoss}``.
"""

from __future__ import annotations

import torch


def pair_distances(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Row-wise Euclidean distances ``sqrt(sum((a - b + eps)^2))`` of ``[N, D]`` tensors."""
    return (a - b + eps).pow(2).sum(dim=1).sqrt()


def contrastive_loss(distances: torch.Tensor, targets: torch.Tensor, margin: float = 0.7) -> torch.Tensor:
    """Sum over pairs of ``0.5 y d^2 + 0.5 (1 - y) max(0, margin - d)^2``."""
    y = targets.to(distances.dtype)
    loss = 0.5 * y * distances.pow(2) + 0.5 * (1 - y) * (margin - distances).clamp(min=0).pow(2)
    return loss.sum()


def tuple_pairs(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For tuples of ``sizes[t]`` images laid out one after another: (query index, other index, target)
    of every (q, p) pair (target 1) and (q, n_i) pair (target 0)."""
    anchors, others, targets, start = [], [], [], 0
    for size in sizes:
        if size < 2:
            raise ValueError(f"a tuple needs a query and a positive, got {size} image(s)")
        anchors += [start] * (size - 1)
        others += list(range(start + 1, start + size))
        targets += [1.0] + [0.0] * (size - 2)
        start += size
    return torch.tensor(anchors), torch.tensor(others), torch.tensor(targets)


def tuple_contrastive_loss(
    embeddings: torch.Tensor, sizes: list[int], margin: float = 0.7, eps: float = 1e-6
) -> torch.Tensor:
    """The paper's loss over tuples: ``embeddings`` holds each tuple's ``[q, p, n_1..n_k]`` rows in turn,
    ``sizes`` the tuples' lengths."""
    anchors, others, targets = (t.to(embeddings.device) for t in tuple_pairs(sizes))
    distances = pair_distances(embeddings[anchors], embeddings[others], eps)
    return contrastive_loss(distances, targets, margin)


def all_pairs_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.7, eps: float = 1e-6
) -> torch.Tensor:
    """The paper's loss over every pair ``i < j`` of a class batch (y = 1 iff equal labels)."""
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=embeddings.device)
    distances = pair_distances(embeddings[i], embeddings[j], eps)
    return contrastive_loss(distances, labels[i] == labels[j], margin)
