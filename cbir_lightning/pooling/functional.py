"""Global pooling of a CNN feature map ``[N, C, H, W]`` into a descriptor ``[N, C]`` (pure functions).

* MAC: max over positions, ``max_{h,w} x``.
* SPoC: mean over positions.
* GeM: generalized mean ``(mean_{h,w} max(x, eps)^p)^(1/p)`` (p = 1: SPoC, p -> inf: MAC).
* R-MAC: MAC of the whole map plus MAC of square regions on ``levels`` scales (Tolias et al.), each
  region's vector L2-normalised, all summed; the region grid is cirtorch's (:func:`rmac_regions`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RMAC_OVERLAP = 0.4
RMAC_STEPS = (2, 3, 4, 5, 6, 7)


def mac(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalized mean over positions; ``p`` may be a (learnable) tensor of one element."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int]]:
    """R-MAC square regions ``(top, left, side)`` of a ``height x width`` map, as cirtorch places them.

    The number of extra regions along the long side is the ``steps`` value whose region overlap is
    closest to 40%; on level ``l`` the side is ``floor(2 * min(H, W) / (l + 1))`` and region starts
    are ``floor(k * (size - side) / (count - 1))``. The whole map is not included.
    """
    short = min(height, width)
    extra_h = extra_w = 0
    if height != width:
        # evaluated in float32 like cirtorch: exact ties (e.g. 5 x 9) then resolve the same way
        steps = torch.tensor(RMAC_STEPS, dtype=torch.float32)
        shift = (max(height, width) - short) / (steps - 1)
        overlaps = torch.abs((short**2 - short * shift) / short**2 - RMAC_OVERLAP)
        extra = int(torch.argmin(overlaps)) + 1
        if height < width:
            extra_w = extra
        else:
            extra_h = extra
    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        tops = _starts(height, side, level + extra_h)
        lefts = _starts(width, side, level + extra_w)
        regions.extend((top, left, side) for top in tops for left in lefts)
    return regions


def _starts(size: int, side: int, count: int) -> list[int]:
    step = 0.0 if count == 1 else (size - side) / (count - 1)
    return [math.floor(k * step) for k in range(count)]


def rmac(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """Sum of L2-normalised MAC vectors of the whole map and of :func:`rmac_regions` (not normalised)."""
    total = l2n(mac(x), eps)
    for top, left, side in rmac_regions(x.shape[-2], x.shape[-1], levels):
        total = total + l2n(mac(x[..., top : top + side, left : left + side]), eps)
    return total


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rows divided by their L2 norm plus ``eps`` (as cirtorch)."""
    return x / (x.norm(p=2, dim=-1, keepdim=True) + eps)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
