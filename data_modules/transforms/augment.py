"""Koch et al. (2015) affine distortions, batched, as pure functions of a ``torch.Generator``.

Each of rotation (+-10 deg), shear (+-0.3 on each axis), scale (0.8..1.2 on each axis) and translation
(+-2 px of a 105 px image) is applied independently with probability 0.5. The same generator state
always gives the same distortion, which is what makes training reproducible with any ``num_workers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineRanges:
    rotation_deg: float = 10.0
    shear: float = 0.3
    scale: tuple[float, float] = (0.8, 1.2)
    translate_px: float = 2.0  # in pixels of a 105 px Omniglot image
    reference_size: int = 105
    probability: float = 0.5


def random_affine_matrices(
    n: int, generator: torch.Generator, ranges: AffineRanges | None = None
) -> torch.Tensor:
    """``[n, 2, 3]`` forward affine matrices in normalised coordinates ([-1, 1])."""
    r = ranges or AffineRanges()

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=generator)

    def active(*shape: int) -> torch.Tensor:
        return (torch.rand(n, *shape, generator=generator) < r.probability).float()

    theta = math.radians(r.rotation_deg) * uniform(-1, 1) * active()
    shear = r.shear * uniform(-1, 1, 2) * active(1)
    scale = 1 + (uniform(*r.scale, 2) - 1) * active(1)
    shift = (2 * r.translate_px / r.reference_size) * uniform(-1, 1, 2) * active(1)

    cos, sin = torch.cos(theta), torch.sin(theta)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shearing = torch.ones(n, 2, 2)
    shearing[:, 0, 1], shearing[:, 1, 0] = shear[:, 0], shear[:, 1]
    linear = torch.diag_embed(scale) @ shearing @ rotation
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)


def apply_affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Warp float images ``[n, c, h, w]`` (background 0) by forward matrices ``[n, 2, 3]``."""
    linear, shift = matrices[:, :, :2], matrices[:, :, 2:]
    inverse = torch.linalg.inv(linear)
    theta = torch.cat([inverse, -inverse @ shift], dim=-1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def koch_distort(
    images: torch.Tensor, generator: torch.Generator, ranges: AffineRanges | None = None
) -> torch.Tensor:
    """Apply an independent random Koch distortion to each image of a float batch."""
    return apply_affine(images, random_affine_matrices(images.shape[0], generator, ranges))
