"""``DSHLoss``: the Deep Supervised Hashing loss (:mod:`cbir_lightning.losses.dsh`) on relaxed codes,
called as a pytorch-metric-learning loss."""

from __future__ import annotations

import torch
from torch import nn

from cbir_lightning.losses.dsh import dsh_all_pairs_loss, dsh_pair_loss
from cbir_lightning.losses.pairs import indices_to_pairs


class DSHLoss(nn.Module):
    """Mean DSH loss over the pairs of ``indices_tuple`` (in (anchor, other) order), or over every pair
    ``i < j`` of the batch when it is None.

    Args: margin m (None: ``2 * bits``, the paper's); alpha, the weight of the +-1 regulariser.
    """

    def __init__(self, margin: float | None = None, alpha: float = 0.01) -> None:
        super().__init__()
        self.margin, self.alpha = margin, alpha

    def forward(
        self, codes: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor:
        if indices_tuple is None:
            return dsh_all_pairs_loss(codes, labels, self.margin, self.alpha)
        anchors, others, targets = indices_to_pairs(indices_tuple, labels)
        return dsh_pair_loss(codes[anchors], codes[others], targets, self.margin, self.alpha)
