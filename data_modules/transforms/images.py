"""Image decoding/encoding helpers shared by the data modules.

Images are grayscale ``uint8`` tensors ``[1, H, W]`` with ink = 255 and background = 0, i.e. inverted
from Omniglot's black-on-white PNGs, so zero padding is background.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cbir_lightning.errors import CbirError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_png(src: str | Path | bytes, name: str | None = None) -> torch.Tensor:
    """Decode a PNG file or its bytes to uint8 ``[1, H, W]`` with ink = 255 (any PNG mode, via ``L``).

    ``name`` labels the image in error messages (defaults to the path). Raises :class:`CbirError`
    if the file cannot be read or decoded.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, label = bytes(src), name or "<image bytes>"
    else:
        label = name or str(src)
        try:
            data = Path(src).read_bytes()
        except OSError as exc:
            raise CbirError(f"{label}: cannot read image ({exc.strerror or exc}); check the path") from exc
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            gray = np.asarray(img.convert("L"))
    except Exception as exc:  # PIL raises many types for corrupt data
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        msg = f"{label}: corrupt or unreadable image ({reason}); re-extract or replace the file"
        raise CbirError(msg) from exc
    return torch.from_numpy(np.invert(gray))[None]


def encode_png(image: torch.Tensor) -> bytes:
    """Encode a uint8 ``[1, H, W]`` or ``[H, W]`` tensor (ink = 255) as a black-on-white grayscale PNG."""
    if image.dtype != torch.uint8 or image.dim() not in (2, 3) or (image.dim() == 3 and image.shape[0] != 1):
        raise CbirError(
            f"cannot encode image of dtype {image.dtype} and shape {tuple(image.shape)}; "
            "expected uint8 [1, H, W]"
        )
    buf = io.BytesIO()
    Image.fromarray(np.invert(image.reshape(image.shape[-2:]).cpu().numpy())).save(buf, "PNG")
    return buf.getvalue()


RESIZE_METHODS = ("area", "bilinear")


def resize_uint8(images: torch.Tensor, size: int, method: str = "area") -> torch.Tensor:
    """Resize uint8 ``[n, c, h, w]`` images to ``size`` x ``size``: ``area`` averaging (antialiased; as
    nearest neighbour when enlarging) or PIL's ``bilinear`` (smooth when enlarging small images, e.g.
    CIFAR-10's 32 px for an ImageNet backbone)."""
    if method not in RESIZE_METHODS:
        raise CbirError(f"resize must be one of {', '.join(RESIZE_METHODS)}, got {method!r}")
    if images.shape[-2:] == (size, size):
        return images
    if method == "bilinear":
        out = [
            np.asarray(
                Image.fromarray(x.permute(1, 2, 0).squeeze(-1).numpy()).resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            for x in images
        ]
        return (
            torch.from_numpy(np.stack(out))
            .reshape(len(images), size, size, -1)
            .permute(0, 3, 1, 2)
            .contiguous()
        )
    out = F.interpolate(images.float(), size=(size, size), mode="area")
    return out.round().clamp(0, 255).to(torch.uint8)
