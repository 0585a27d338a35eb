"""Pairs named by a pytorch-metric-learning ``indices_tuple``, in a fixed order (pure functions).

A pair indices tuple is ``(a1, p, a2, n)``: positive pairs ``(a1[i], p[i])`` and negative pairs
``(a2[i], n[i])``; a triplet tuple ``(a, p, n)`` gives the pairs ``(a, p)`` and ``(a, n)``. The toolkit's
own pair losses take the pairs ordered by (anchor, other), which is the order of the pairs a pair batch
(``anchor i`` with ``other n + i``) or a tuple batch (``q`` with ``p, n_1..n_k``) was built in, so a loss
over those pairs sums in the same order as before they were passed as an indices tuple.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu


def pairs_to_indices(
    anchors: torch.Tensor, others: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a1, p, a2, n)`` of pairs ``(anchors[i], others[i])`` with ``targets[i]`` 1 (positive) or 0."""
    pos = targets.bool()
    return anchors[pos], others[pos], anchors[~pos], others[~pos]


def aligned_pairs(same: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """Labels ``[2n]`` and the pair indices tuple of ``n`` aligned pairs embedded as ``[first; second]``:
    rows ``i`` and ``n + i`` form pair ``i``; a matching pair shares the label ``i``, every other row has
    a label of its own (``labels = arange(2n)``, then ``labels[n + i] = i`` where ``same[i]``)."""
    n = len(same)
    anchors = torch.arange(n, device=same.device)
    labels = torch.arange(2 * n, device=same.device)
    labels[n:][same.bool()] = anchors[same.bool()]
    return labels, pairs_to_indices(anchors, anchors + n, same)


def indices_to_pairs(
    indices_tuple: tuple, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(anchors, others, targets)`` of every pair an indices tuple names, sorted by (anchor, other);
    ``targets`` is 1.0 for a positive pair, 0.0 for a negative one."""
    a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
    anchors, others = torch.cat([a1, a2]), torch.cat([p, n])
    targets = torch.cat([torch.ones(len(a1)), torch.zeros(len(a2))]).to(anchors.device)
    order = torch.argsort(anchors * (int(others.max()) + 1 if len(others) else 1) + others, stable=True)
    return anchors[order], others[order], targets[order]


def all_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i, j, labels[i] == labels[j])`` of every unordered pair ``i < j`` (row-major order)."""
    i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
    return i, j, labels[i] == labels[j]
