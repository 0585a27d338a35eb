"""``AllPairsBCELoss``: balanced binary cross-entropy on every ordered pair of a class batch
(:func:`~cbir_lightning.losses.pair_bce.all_pairs_bce`) on a model's all-pairs scores."""

from __future__ import annotations

import torch

from cbir_lightning.errors import CbirError
from cbir_lightning.losses.pair_bce import all_pairs_bce
from cbir_lightning.losses.score_loss import ScoreLoss


class AllPairsBCELoss(ScoreLoss):
    """``all_pairs_bce(distance(e, e), labels)``: positives and negatives weigh half each. Class
    batches only (``indices_tuple`` None; for given pairs use :class:`PairBCELoss`)."""

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor:
        if indices_tuple is not None:
            raise CbirError("AllPairsBCELoss scores every pair of a class batch; use PairBCELoss for pairs")
        return all_pairs_bce(self._distance()(embeddings, embeddings), labels)
