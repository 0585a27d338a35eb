"""The one place where the models' loss hyperparameters become loss and miner objects.

Configs name losses and miners by ``class_path`` (any pytorch-metric-learning loss or miner, or the
toolkit's :mod:`cbir_lightning.losses`); the older string values stay valid, because saved checkpoints'
hyperparameters hold them:

* GeM: ``loss: contrastive`` (+ ``margin``) -> :class:`CirtorchContrastiveLoss`;
  ``loss: pml_contrastive | pml_triplet | pml_multi_similarity`` (+ ``loss_kwargs``) -> the PML loss;
  ``miner: default | <name in pml.MINERS> | null`` (+ ``miner_kwargs``) -> the PML miner.
* Siamese (Koch): ``batch_loss: bce | softmax`` -> :class:`AllPairsBCELoss` / :class:`InBatchSoftmaxLoss`.
* DSH: ``margin`` / ``alpha`` -> :class:`DSHLoss`.
"""

from __future__ import annotations

from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.losses.all_pairs_bce_loss import AllPairsBCELoss
from cbir_lightning.losses.cirtorch_contrastive_loss import CirtorchContrastiveLoss
from cbir_lightning.losses.dsh_loss import DSHLoss
from cbir_lightning.losses.in_batch_softmax_loss import InBatchSoftmaxLoss
from cbir_lightning.losses.pml import MINERS, PML_LOSSES, build_pml_loss, build_pml_miner

GEM_LOSSES = ("contrastive", *(f"pml_{name}" for name in PML_LOSSES))
BATCH_LOSSES = {"bce": AllPairsBCELoss, "softmax": InBatchSoftmaxLoss}
# every GeM checkpoint saved before margin became optional holds this value, whatever its loss
OLD_DEFAULT_MARGIN = 0.7


def gem_loss(loss: str | nn.Module, margin: float | None, loss_kwargs: dict | None) -> nn.Module:
    """GeM's loss: an object as it is, ``contrastive`` (margin, default 0.7) or ``pml_<name>``."""
    if isinstance(loss, nn.Module):
        if margin is not None:
            raise CbirError(
                f"margin applies to loss: contrastive only; set the margin in loss: init_args of "
                f"{type(loss).__name__}"
            )
        if loss_kwargs:
            raise CbirError("loss_kwargs applies to loss names only; put them in loss: init_args")
        return loss
    if loss not in GEM_LOSSES:
        raise CbirError(f"unknown loss {loss!r}; choose one of {', '.join(GEM_LOSSES)} or a class_path")
    if loss == "contrastive":
        return CirtorchContrastiveLoss(OLD_DEFAULT_MARGIN if margin is None else margin)
    if margin is not None and margin != OLD_DEFAULT_MARGIN:
        raise CbirError(
            f"margin applies to loss: contrastive only, not {loss}; set it in loss_kwargs "
            "(e.g. {margin: ...} or {pos_margin: ..., neg_margin: ...})"
        )
    return build_pml_loss(loss.removeprefix("pml_"), **(loss_kwargs or {}))


def gem_miner(
    loss: str | nn.Module, miner: str | nn.Module | None, miner_kwargs: dict | None
) -> nn.Module | None:
    """The miner for class batches: an object as it is; ``default``: the loss's own (PML losses of
    ``pml.PML_LOSSES``, none for the paper's contrastive loss); a name of ``pml.MINERS``; or None."""
    if isinstance(miner, nn.Module):
        if miner_kwargs:
            raise CbirError("miner_kwargs applies to miner names only; put them in miner: init_args")
        return miner
    if loss == "contrastive":
        return None
    if isinstance(loss, str):
        return build_pml_miner(loss.removeprefix("pml_"), miner, **(miner_kwargs or {}))
    if miner == "default":
        own = [m for cls, m in PML_LOSSES.values() if type(loss) is cls]
        return own[0](**(miner_kwargs or {})) if own else None
    if miner is None or miner in MINERS:
        return build_pml_miner("contrastive", miner, **(miner_kwargs or {}))
    raise CbirError(
        f"unknown miner {miner!r}; choose default, null, a class_path or one of {', '.join(MINERS)}"
    )


def batch_loss(loss: str | nn.Module) -> nn.Module:
    """SiameseModule's class-batch loss: an object as it is, or ``bce`` / ``softmax``."""
    if isinstance(loss, nn.Module):
        return loss
    if loss not in BATCH_LOSSES:
        raise CbirError(f"batch_loss must be one of {', '.join(BATCH_LOSSES)} or a class_path, got {loss!r}")
    return BATCH_LOSSES[loss]()


def dsh_loss(loss: nn.Module | None, margin: float | None, alpha: float | None) -> nn.Module:
    """DSHModule's loss: an object as it is, else ``DSHLoss(margin, alpha)`` (alpha default 0.01)."""
    if loss is None:
        return DSHLoss(margin, 0.01 if alpha is None else alpha)
    if margin is not None or alpha is not None:
        raise CbirError("margin and alpha apply without loss: only; set them in loss: init_args")
    return loss
