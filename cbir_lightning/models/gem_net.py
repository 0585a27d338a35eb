"""``GeMNet``: CNN backbone + global pooling (MAC, SPoC, GeM, R-MAC) + L2 norm (+ a learnable whitening
layer and L2 norm again), the descriptor of Radenović, Tolias and Chum.

``descriptor`` is the single-scale output; ``embed`` combines ``scales`` by the generalized mean with the
GeM p (:func:`~cbir_lightning.models.multiscale.multiscale_embed`). One-channel images are repeated to
three channels; normalisation (ImageNet mean/std) is the DataModule's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.models.backbones import Backbone
from cbir_lightning.models.multiscale import multiscale_embed
from cbir_lightning.pooling.layers import GeM, build_pooling
from cbir_lightning.whitening.io import load_whitening


class GeMNet(nn.Module):
    """Args: as :class:`~cbir_lightning.models.GeMSiameseModule`'s of the same names (backbone, weights,
    pooling, p, learn_p, freeze_batchnorm, whitening, whitening_init, freeze, trainable_stages,
    whitening_hidden).

    With ``freeze: backbone`` the net is a frozen trunk and trainable layers: :meth:`trunk` (the frozen
    backbone stages, and the pooling too when nothing after it in the backbone trains and p is fixed) and
    :meth:`from_trunk` (the rest), so ``descriptor(x) == from_trunk(trunk()(x))``.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = None,
        pooling: str = "gem",
        p: float = 3.0,
        learn_p: bool = True,
        freeze_batchnorm: bool = False,
        whitening: int | None = None,
        whitening_init: str | None = None,
        freeze: str | None = None,
        trainable_stages: int = 0,
        whitening_hidden: int = 0,
    ) -> None:
        super().__init__()
        if freeze not in (None, "backbone"):
            raise CbirError(f"freeze must be 'backbone' or null, got {freeze!r}")
        if trainable_stages and freeze is None:
            raise CbirError("trainable_stages needs freeze: backbone (the stages before them stay frozen)")
        self.backbone = Backbone(backbone, weights, freeze_batchnorm)
        self.pool = build_pooling(pooling, p, learn_p)
        if whitening_hidden:
            if whitening is None or whitening_init is not None:
                raise CbirError(
                    "whitening_hidden needs whitening (the output dimension) and no whitening_init: the "
                    "layer is a small MLP, trained from random weights"
                )
            self.whiten = MLPProjection(self.backbone.channels, whitening_hidden, whitening)
        else:
            self.whiten = whitening_layer(self.backbone.channels, whitening, whitening_init)
        if freeze == "backbone":
            self.backbone.freeze(trainable_stages)

    @property
    def p(self) -> float:
        """The GeM exponent used to combine scales (1 for other poolings)."""
        return float(self.pool.p.detach()) if isinstance(self.pool, GeM) else 1.0

    @property
    def dim(self) -> int:
        """The descriptor's dimension."""
        return self.whiten.out_features if self.whiten is not None else self.backbone.channels

    def _pool_in_trunk(self) -> bool:
        """Whether the pooling is part of the frozen trunk (nothing before it trains, p fixed)."""
        fixed = not any(x.requires_grad for x in self.pool.parameters())
        return self.backbone.frozen_stages > 0 and not self.backbone.trainable() and fixed

    def trunk(self) -> nn.Module | None:
        """The frozen part (images -> feature maps, or L2-normalised pooled vectors when the pooling is
        frozen too), or None when nothing is frozen."""
        frozen = self.backbone.frozen()
        if not frozen:
            return None
        parts = [ThreeChannels(), *frozen]
        if self._pool_in_trunk():
            parts += [self.pool, L2Normalize()]
        return nn.Sequential(*parts).eval()

    def unfreeze(self, mode: bool = True) -> None:
        """The frozen backbone stages train again (see :meth:`Backbone.unfreeze`)."""
        self.backbone.unfreeze(mode)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The whitening layer (if any) on L2-normalised pooled vectors, L2-normalised again."""
        return nn.functional.normalize(self.whiten(pooled), dim=-1) if self.whiten is not None else pooled

    def from_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Single-scale descriptors ``[N, D]`` from the trunk's output ``x``."""
        if not self._pool_in_trunk():
            for stage in self.backbone.trainable():
                x = stage(x)
            x = nn.functional.normalize(self.pool(x), dim=-1)
        return self._project(x)

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """Single-scale L2-normalised descriptors ``[N, D]``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self._project(nn.functional.normalize(self.pool(self.backbone(images)), dim=-1))

    def embed(self, images: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        """Multi-scale descriptors ``[N, D]``: :meth:`descriptor` at each scale, combined with p."""
        return multiscale_embed(self.descriptor, images, scales, self.p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.descriptor(images)


class MLPProjection(nn.Sequential):
    """``Linear(in, hidden) -> BatchNorm -> ReLU -> Linear(hidden, out)``: a small MLP head (the learnable
    layer after pooling when ``whitening_hidden`` is set); ``out_features`` as ``nn.Linear``'s."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__(
            nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_features)
        )
        self.out_features = out_features


class ThreeChannels(nn.Module):
    """One-channel images repeated to three channels; others unchanged."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1)


def whitening_layer(channels: int, dim: int | None, init: str | None) -> nn.Linear | None:
    """The learnable whitening layer ``channels -> dim`` (None: none): random, ``identity``, or from a
    whitening file (``weight = projection``, ``bias = -projection @ mean``)."""
    if init is None:
        return None if dim is None else nn.Linear(channels, dim)
    if init == "identity":  # starts as the pretrained descriptor itself; training moves it from there
        if dim not in (None, channels):
            raise CbirError(f"whitening_init: identity needs whitening: {channels} (the net's dimension)")
        layer = nn.Linear(channels, channels)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(channels))
            layer.bias.zero_()
        return layer
    w = load_whitening(init)
    projection, mean = w["projection"].float(), w["mean"].float()
    if len(mean) != channels:
        raise CbirError(f"whitening_init {init} is for {len(mean)}-d descriptors, the net gives {channels}")
    dim = dim or len(projection)
    if dim > len(projection):
        raise CbirError(f"whitening {dim} exceeds the {len(projection)} rows of whitening_init {init}")
    layer = nn.Linear(channels, dim)
    with torch.no_grad():
        layer.weight.copy_(projection[:dim])
        layer.bias.copy_(-projection[:dim] @ mean)
    return layer
