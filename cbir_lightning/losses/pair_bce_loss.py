"""``PairBCELoss``: Koch's per-pair binary cross-entropy on a model's pair scores (logits)."""

from __future__ import annotations

import torch

from cbir_lightning.losses.pair_bce import pair_bce
from cbir_lightning.losses.pairs import all_pairs, indices_to_pairs
from cbir_lightning.losses.score_loss import ScoreLoss


class PairBCELoss(ScoreLoss):
    """Mean of ``BCE(s(e_a, e_o), y)`` over the pairs of ``indices_tuple`` (in (anchor, other) order), or
    over every pair ``i < j`` of the batch when it is None; ``s`` is the distance's ``pairwise_distance``
    (logit of "same class")."""

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor:
        if indices_tuple is None:
            anchors, others, targets = all_pairs(labels)
        else:
            anchors, others, targets = indices_to_pairs(indices_tuple, labels)
        logits = self._distance().pairwise_distance(embeddings[anchors], embeddings[others])
        return pair_bce(logits, targets)
