"""Binary cross-entropy on Siamese pair scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_bce(logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Plain BCE on aligned pairs: ``logits [n]``, ``same [n]`` in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype))


def all_pairs_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE over every ordered pair ``(i, j), i != j`` of a batch, from ``logits [B, B]`` and ``labels [B]``.

    Positives and negatives are weighted to contribute equally (each half of the loss), so the loss
    sees balanced pairs however few positives a batch holds. A batch without positives or negatives
    uses the pairs it has.
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    losses = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype), reduction="none")
    pos, neg = same & off_diagonal, ~same
    parts = [losses[m].mean() for m in (pos, neg) if m.any()]
    return torch.stack(parts).mean()


def all_pairs_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """N-way cross-entropy inside a batch: every positive pair ``(i, j)`` competes with all of ``i``'s
    negatives, ``-log(exp(s_ij) / (exp(s_ij) + sum_k exp(s_ik)))`` over ``k`` of another class, averaged
    over positive pairs. It trains the decision the one-shot task makes (pick the match among N).
    """
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    if not pos.any():
        raise ValueError("all_pairs_softmax needs at least two samples of one class in the batch")
    negatives = torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1, keepdim=True)
    rows, cols = pos.nonzero(as_tuple=True)
    s = logits[rows, cols]
    return (torch.logaddexp(s, negatives[rows, 0]) - s).mean()
