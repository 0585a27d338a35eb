"""Multi-scale descriptors (Radenović et al.): the image embedded at several scales, combined by the
generalized mean with the model's GeM ``p`` and L2-normalised (pure functions)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def combine_scales(descriptors: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    """``normalize((mean_s v_s^p)^(1/p))`` of ``[S, N, D]`` per-scale descriptors.

    Negative components (after a whitening layer) keep their sign: ``sign(v)|v|^p`` and the inverse
    likewise, which equals the plain formula for non-negative descriptors.
    """
    powered = descriptors.sign() * descriptors.abs().pow(p)
    mean = powered.mean(dim=0)
    return F.normalize(mean.sign() * mean.abs().pow(1.0 / p), dim=-1)


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Images resized by ``scale`` (bilinear, as cirtorch); scale 1 returns them unchanged."""
    if scale == 1:
        return images
    return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)


def multiscale_embed(
    embed: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float],
    p: float = 1.0,
) -> torch.Tensor:
    """``embed`` at every scale, combined by :func:`combine_scales`; one scale returns ``embed(images)``."""
    if list(scales) == [1] or list(scales) == [1.0]:
        return embed(images)
    return combine_scales(torch.stack([embed(rescale(images, s)) for s in scales]), p)
