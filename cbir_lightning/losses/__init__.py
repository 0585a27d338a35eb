"""Losses called as pytorch-metric-learning losses, ``loss(embeddings, labels, indices_tuple=None)``
(see :class:`cbir_lightning.contracts.EmbeddingLoss`); the maths are pure functions in
``contrastive``, ``dsh``, ``pair_bce`` and ``proxies``."""

from cbir_lightning.losses.all_pairs_bce_loss import AllPairsBCELoss
from cbir_lightning.losses.cirtorch_contrastive_loss import CirtorchContrastiveLoss
from cbir_lightning.losses.dsh_loss import DSHLoss
from cbir_lightning.losses.in_batch_softmax_loss import InBatchSoftmaxLoss
from cbir_lightning.losses.model_similarity import ModelSimilarity
from cbir_lightning.losses.pair_bce_loss import PairBCELoss
from cbir_lightning.losses.proxy_softmax_loss import ProxySoftmaxLoss

__all__ = [
    "AllPairsBCELoss",
    "CirtorchContrastiveLoss",
    "DSHLoss",
    "InBatchSoftmaxLoss",
    "ModelSimilarity",
    "PairBCELoss",
    "ProxySoftmaxLoss",
]
