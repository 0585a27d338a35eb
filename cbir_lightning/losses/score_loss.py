"""``ScoreLoss``: the base of the losses on a model's similarity scores (logits), which take the
similarity as a pytorch-metric-learning ``distance`` (e.g.
:class:`~cbir_lightning.losses.model_similarity.ModelSimilarity`); a module that owns the similarity
sets it when the loss has none (:meth:`use_similarity`)."""

from __future__ import annotations

from pytorch_metric_learning.distances import BaseDistance
from torch import nn

from cbir_lightning.errors import CbirError


class ScoreLoss(nn.Module):
    def __init__(self, distance: BaseDistance | None = None) -> None:
        super().__init__()
        self.distance = distance

    def use_similarity(self, distance: BaseDistance) -> None:
        """Score with ``distance`` unless the loss was given one."""
        if self.distance is None:
            self.distance = distance

    def _distance(self) -> BaseDistance:
        if self.distance is None:
            raise CbirError(f"{type(self).__name__} needs a similarity: pass distance=ModelSimilarity(...)")
        if not self.distance.is_inverted:
            raise CbirError(f"{type(self).__name__} needs a similarity (is_inverted=True), not a distance")
        return self.distance
