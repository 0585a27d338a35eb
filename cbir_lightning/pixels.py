"""Image tensors shown to people: the original pixels of a normalised evaluation tensor (W&B grids, the
DataModules' ``display_image``). A pure function: tensors in, tensors out."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def display_pixels(
    image: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """The original pixels of one evaluation tensor ``[C, H, W]``: ``x * std + mean`` per channel (when
    ``mean``/``std`` are set), clamped to [0, 1], as uint8 RGB ``[3, H, W]`` (``round(255 x)``; one channel
    repeated). Inverts :func:`normalize` up to rounding."""
    x = image.detach().float().cpu()
    if mean is not None:
        m = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
        x = x * s + m
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)
