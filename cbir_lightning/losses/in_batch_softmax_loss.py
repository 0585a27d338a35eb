"""``InBatchSoftmaxLoss``: every positive pair against all the anchor's negatives
(:func:`~cbir_lightning.losses.pair_bce.all_pairs_softmax`) on a model's all-pairs scores."""

from __future__ import annotations

import torch

from cbir_lightning.errors import CbirError
from cbir_lightning.losses.pair_bce import all_pairs_softmax
from cbir_lightning.losses.score_loss import ScoreLoss


class InBatchSoftmaxLoss(ScoreLoss):
    """``all_pairs_softmax(distance(e, e), labels)``: mean over positive pairs ``(i, j)`` of
    ``-log(exp(s_ij) / (exp(s_ij) + sum_k exp(s_ik)))``, ``k`` of another class. Class batches only."""

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor:
        if indices_tuple is not None:
            raise CbirError("InBatchSoftmaxLoss scores every pair of a class batch, not given pairs")
        return all_pairs_softmax(self._distance()(embeddings, embeddings), labels)
