"""Decoding an uploaded query image: only JPEG, PNG or WebP, and never more pixels than the cap.

The pixel count is read from the image header and checked *before* any pixel is decoded, so a small file
that declares a huge image (a "pixel bomb": a 100 KB PNG of 9000x9900 pixels) costs no memory.
"""

from __future__ import annotations

import io

from PIL import Image

from cbir_lightning.search.files import DEFAULT_MAX_PIXELS, reduce_for

ACCEPTED_FORMATS = ["JPEG", "PNG", "WEBP"]
# 25 megapixels takes a full-resolution 6000x4000 camera photo (24 MP, the largest most cameras and phones
# save) but is far below Pillow's own limit (89 MP, and 2x that before it refuses). Measured with
# benchmarks/serve_load.py: one search of a 23.6 MP upload (decode + the model's transform) adds ~0.25 GB
# to the server's peak, and a stream of them with --max-concurrent 2 peaked at 1.6 GB (0.84 GB idle); at
# 89 MP it would be ~1 GB per search. The model itself sees ~100-500 px a side.
DEFAULT_MAX_UPLOAD_PIXELS = DEFAULT_MAX_PIXELS


class UploadRefused(Exception):
    """An upload the server will not decode: ``status`` (413 or 415) and a message safe for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def open_header(data: bytes) -> Image.Image:
    """The lazily opened image (header read, no pixels decoded); UploadRefused 415 unless JPEG/PNG/WebP."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UploadRefused(413, f"upload refused: image too large ({err}); resize it first") from err
    except Exception as err:  # UnidentifiedImageError, or a header Pillow rejects
        raise UploadRefused(
            415, "upload refused: not a JPEG, PNG or WebP image (Pillow cannot decode it)"
        ) from err
    if image.format not in ACCEPTED_FORMATS:  # defensive: ``formats`` already restricts the plugins
        raise UploadRefused(415, f"upload refused: {image.format} is not a JPEG, PNG or WebP image")
    return image


def check_pixels(image: Image.Image, max_pixels: int) -> None:
    """UploadRefused 413 if the header declares more than ``max_pixels`` pixels (nothing decoded yet)."""
    width, height = image.size
    if width * height > max_pixels:
        raise UploadRefused(
            413,
            f"upload refused: image too large ({width}x{height} = {width * height} pixels, the limit is "
            f"{max_pixels}); resize it first",
        )


def decode_upload(
    data: bytes, max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, size: int | None = None
) -> Image.Image:
    """The fully decoded upload; UploadRefused (413 too many pixels, 415 not JPEG/PNG/WebP or corrupt).

    Guarantee: no decoder other than JPEG/PNG/WebP runs, and no pixel is decoded when the header declares
    more than ``max_pixels`` pixels. ``size`` (the side the model's transform resizes to): a large JPEG
    is decoded reduced to twice that (``search.files.reduce_for``; a 24 MP photo at 1/8 scale), as
    ``index`` decodes the same file.
    """
    image = open_header(data)
    check_pixels(image, max_pixels)
    reduce_for(image, size)
    try:
        image.load()
    except Exception as err:  # Pillow raises many types for corrupt data
        raise UploadRefused(
            415, f"upload refused: not a JPEG, PNG or WebP image (the {image.format} data is corrupt)"
        ) from err
    return image
