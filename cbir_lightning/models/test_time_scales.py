"""Test-time augmentation by zooming: the embedding of an image is the mean of its embeddings at a few
scales about the image centre, ``e(x) = mean_s embed(zoom(x, s))``. Handwriting is drawn at varying
sizes, and the training distortions (Koch's, ``data_modules/transforms/augment.py``) include 0.8-1.2
scaling with the same bilinear resampling, so the net has seen such zooms; averaging a few makes the
embedding less sensitive to the size a character happens to be drawn at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def zoom(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Float images ``[n, c, h, w]`` magnified by ``scale`` about the centre (``< 1`` shrinks; the border
    is filled with 0, the background of ink-bright images); ``scale == 1`` returns them unchanged."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if scale == 1:
        return images
    n, _, h, w = images.shape
    # affine_grid's grid for theta = diag(1/scale), written out: ONNX (opset 17) exports grid_sample
    # (GridSample) but not affine_grid, and the exported embedder must zoom as the checkpoint does
    ys = (torch.arange(h, dtype=images.dtype, device=images.device) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=images.dtype, device=images.device) * 2 + 1) / w - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    grid = (torch.stack([grid_x, grid_y], dim=-1) / scale).expand(n, h, w, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mean_over_scales(
    embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scales: Sequence[float]
) -> torch.Tensor:
    """``mean_s embed(zoom(images, s))``, ``[n, d]``."""
    return torch.stack([embed(zoom(images, float(s))) for s in scales]).mean(0)
