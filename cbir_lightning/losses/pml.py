"""pytorch-metric-learning losses and miners by name, for class batches ``(images, labels)``.

=================== ============================ ==========================
name                loss                         default miner
=================== ============================ ==========================
``contrastive``     ``losses.ContrastiveLoss``   ``miners.PairMarginMiner``
``triplet``         ``losses.TripletMarginLoss`` ``miners.TripletMarginMiner``
``multi_similarity`` ``losses.MultiSimilarityLoss`` ``miners.MultiSimilarityMiner``
=================== ============================ ==========================

Keyword arguments go to the classes unchanged (e.g. ``{"pos_margin": 0, "neg_margin": 0.7}``).
"""

from __future__ import annotations

from pytorch_metric_learning import losses, miners
from torch import nn

from cbir_lightning.errors import CbirError

PML_LOSSES = {
    "contrastive": (losses.ContrastiveLoss, miners.PairMarginMiner),
    "triplet": (losses.TripletMarginLoss, miners.TripletMarginMiner),
    "multi_similarity": (losses.MultiSimilarityLoss, miners.MultiSimilarityMiner),
}
MINERS = {
    "pair_margin": miners.PairMarginMiner,
    "triplet_margin": miners.TripletMarginMiner,
    "multi_similarity": miners.MultiSimilarityMiner,
}


def build_pml_loss(name: str, **kwargs) -> nn.Module:
    if name not in PML_LOSSES:
        raise CbirError(
            f"unknown pytorch-metric-learning loss {name!r}; choose one of {', '.join(PML_LOSSES)}"
        )
    try:
        return PML_LOSSES[name][0](**kwargs)
    except TypeError as err:
        raise CbirError(f"bad arguments for loss {name!r}: {err}") from err


def build_pml_miner(loss_name: str, miner: str | None = "default", **kwargs) -> nn.Module | None:
    """The miner: ``default`` (the loss's own, see the table), a name from ``MINERS`` or None (all pairs)."""
    if miner is None:
        return None
    if miner == "default":
        cls = PML_LOSSES[loss_name][1]
    elif miner in MINERS:
        cls = MINERS[miner]
    else:
        raise CbirError(f"unknown miner {miner!r}; choose default, null or one of {', '.join(MINERS)}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise CbirError(f"bad arguments for miner {miner!r}: {err}") from err
