"""``ProxySoftmaxLoss``: a classification loss over ALL training classes (not only a batch's), used only
for training: one learned proxy per class, scored against the embeddings with a similarity
(:func:`~cbir_lightning.losses.proxies.proxy_softmax`).

The similarity is the model's own by default (Koch's weighted-L1 head, so the proxies train the metric
the one-shot task uses), or any pytorch-metric-learning similarity given as ``distance`` (e.g.
``CosineSimilarity``: normalized softmax). ``num_classes`` may be left out: the module then builds the
proxies from its DataModule's ``num_classes`` before training (:meth:`build`); a checkpoint restores
them from the saved shape.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.losses.proxies import proxy_softmax
from cbir_lightning.losses.score_loss import ScoreLoss


class ProxySoftmaxLoss(ScoreLoss):
    """``proxy_softmax(distance(embeddings, proxies), labels, scale, margin)``, proxies ``[C, d]``.

    Args:
        num_classes / embedding_dim: proxies' count and size; ``None``: set by :meth:`build`.
        scale / margin: see :func:`~cbir_lightning.losses.proxies.proxy_softmax`.
        init: proxies' start, ``uniform`` in [0, 1] (sigmoid embeddings, as Koch's) or ``normal``.
        distance: the similarity (``is_inverted``); ``None``: the model's own.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        scale: float = 1.0,
        margin: float = 0.0,
        init: str = "uniform",
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance)
        if init not in ("uniform", "normal"):
            raise CbirError(f"ProxySoftmaxLoss init must be 'uniform' or 'normal', got {init!r}")
        self.scale, self.margin, self.init = float(scale), float(margin), init
        self.proxies: nn.Parameter | None = None
        if num_classes is not None and embedding_dim is not None:
            self.build(num_classes, embedding_dim)

    @property
    def num_classes(self) -> int | None:
        return None if self.proxies is None else int(self.proxies.shape[0])

    def build(self, num_classes: int, embedding_dim: int) -> None:
        """Create the ``[num_classes, embedding_dim]`` proxies (once; a second call must agree)."""
        if self.proxies is not None:
            if tuple(self.proxies.shape) != (num_classes, embedding_dim):
                raise CbirError(
                    f"ProxySoftmaxLoss has {tuple(self.proxies.shape)} proxies but the training data has "
                    f"{num_classes} classes of {embedding_dim}-d embeddings; drop num_classes from the config"
                )
            return
        proxies = torch.empty(num_classes, embedding_dim)
        nn.init.uniform_(proxies) if self.init == "uniform" else nn.init.normal_(proxies)
        self.proxies = nn.Parameter(proxies)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "proxies")
        if self.proxies is None and saved is not None:
            self.build(*saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor:
        if self.proxies is None:
            raise CbirError(
                "ProxySoftmaxLoss has no proxies yet: set num_classes and embedding_dim, or train it in a "
                "module whose DataModule reports num_classes"
            )
        if indices_tuple is not None:
            raise CbirError("ProxySoftmaxLoss scores each sample against every class, not given pairs")
        scores = self._distance()(embeddings, self.proxies.to(embeddings.dtype))
        return proxy_softmax(scores, labels, self.scale, self.margin)
