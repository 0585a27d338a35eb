"""``CirtorchContrastiveLoss``: the contrastive loss of Radenović, Tolias and Chum as cirtorch computes
it (:mod:`cbir_lightning.losses.contrastive`), summed over pairs, called as a pytorch-metric-learning loss."""

from __future__ import annotations

import torch
from torch import nn

from cbir_lightning.losses.contrastive import all_pairs_contrastive_loss, contrastive_loss, pair_distances
from cbir_lightning.losses.pairs import indices_to_pairs


class CirtorchContrastiveLoss(nn.Module):
    """``sum 0.5 y d^2 + 0.5 (1 - y) max(0, margin - d)^2`` over the pairs of ``indices_tuple`` (in
    (anchor, other) order), or over every pair ``i < j`` of the batch when it is None.

    Args: margin (0.7 in the paper, 0.85 in the later recipe); eps of the distance
    ``sqrt(sum((a - b + eps)^2))``.
    """

    def __init__(self, margin: float = 0.7, eps: float = 1e-6) -> None:
        super().__init__()
        self.margin, self.eps = float(margin), eps

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor:
        if indices_tuple is None:
            return all_pairs_contrastive_loss(embeddings, labels, self.margin, self.eps)
        anchors, others, targets = indices_to_pairs(indices_tuple, labels)
        distances = pair_distances(embeddings[anchors], embeddings[others], self.eps)
        return contrastive_loss(distances, targets, self.margin)
