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
    pooling, p, learn_p, freeze_batchnorm, whitening, whitening_init)."""

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
    ) -> None:
        super().__init__()
        self.backbone = Backbone(backbone, weights, freeze_batchnorm)
        self.pool = build_pooling(pooling, p, learn_p)
        self.whiten = whitening_layer(self.backbone.channels, whitening, whitening_init)

    @property
    def p(self) -> float:
        """The GeM exponent used to combine scales (1 for other poolings)."""
        return float(self.pool.p.detach()) if isinstance(self.pool, GeM) else 1.0

    @property
    def dim(self) -> int:
        """The descriptor's dimension."""
        return self.whiten.out_features if self.whiten is not None else self.backbone.channels

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """Single-scale L2-normalised descriptors ``[N, D]``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = nn.functional.normalize(self.pool(self.backbone(images)), dim=-1)
        if self.whiten is not None:
            x = nn.functional.normalize(self.whiten(x), dim=-1)
        return x

    def embed(self, images: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        """Multi-scale descriptors ``[N, D]``: :meth:`descriptor` at each scale, combined with p."""
        return multiscale_embed(self.descriptor, images, scales, self.p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.descriptor(images)


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
