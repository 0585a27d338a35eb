"""``ModelSimilarity``: a model's own learned similarity (e.g. Koch's weighted-L1 head) as a
pytorch-metric-learning distance, so losses on scores take it like any PML ``distance``.

``is_inverted=True`` (higher = more similar) and no normalisation: ``distance(q, r)`` is
``all_scores(q, r)`` ``[nq, nr]`` and ``pairwise_distance(a, b)`` is ``pair_scores(a, b)`` ``[n]`` for
aligned rows. The score functions are held as plain callables (bound methods of the net), not as
submodules, so the net's weights are not registered twice in a module's state dict.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pytorch_metric_learning.distances import BaseDistance


class ModelSimilarity(BaseDistance):
    def __init__(
        self,
        pair_scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        all_scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__(normalize_embeddings=False, is_inverted=True)
        self.pair_scores, self.all_scores = pair_scores, all_scores

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return self.all_scores(query_emb, ref_emb)

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        return self.pair_scores(query_emb, ref_emb)
