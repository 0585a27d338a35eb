"""Image files of a collection: which files count, their identity, and safe decoding."""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from cbir_lightning.errors import CbirError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's decompression-bomb limit
# The pixel cap of ``index`` and ``serve`` (``--max-pixels``, ``--max-upload-pixels``): 25 MP takes a
# full-resolution 6000x4000 camera photo but not a 9400x9400 PNG bomb under Pillow's own limit (its 86 KB
# file took ``index`` from 1.07 GB to 4.08 GB peak). Checked from the header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 25_000_000
# JPEGs with more pixels than this are decoded reduced (Pillow's ``draft``: DCT scaling by 1/2, 1/4 or
# 1/8) to at least twice the size the model's transform resizes to; smaller images decode in full.
DRAFT_ABOVE_PIXELS = 4_000_000


@dataclass(frozen=True)
class Decoding:
    """How image files are decoded for a model: refused above ``max_pixels`` (from the header), and,
    when ``size`` (the side the model's transform resizes to, e.g. the DataModule's ``image_size``) is
    known, large JPEGs decoded reduced (:func:`reduce_for`). The same file decodes to the same pixels in
    ``index`` and ``serve``."""

    max_pixels: int = MAX_PIXELS
    size: int | None = None


FULL = Decoding()  # Pillow's pixel limit, decoded in full


def reduce_for(image: Image.Image, size: int | None) -> None:
    """Make the JPEG ``image`` (opened, not yet decoded) decode at the smallest DCT scale that keeps both
    sides at least ``2 * size`` pixels, if it has more than ``DRAFT_ABOVE_PIXELS`` pixels; ``image.size``
    is then the reduced size. Other formats, smaller images, or ``size`` None: decoded in full."""
    if size and image.format == "JPEG" and image.width * image.height > DRAFT_ABOVE_PIXELS:
        image.draft(image.mode, (2 * size, 2 * size))


def scan_collection(root: str | Path) -> tuple[list[str], list[dict]]:
    """``(paths, skipped)``: the paths (relative to ``root``, POSIX, sorted) of every jpg/png/webp file
    below ``root``, and ``{"path", "reason"}`` for each symlink (file or folder) that resolves outside
    ``root``: those are neither followed nor indexed. A symlinked folder inside ``root`` is not followed
    either (its files are indexed under their own paths); hidden files are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise CbirError(f"image folder {root} not found; pass a folder of jpg/png/webp images with --images")
    real_root = root.resolve()
    paths, skipped = [], []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in dirnames:
            if (here / name).is_symlink() and not _inside(here / name, real_root):
                rel = (here / name).relative_to(root).as_posix()
                skipped.append({"path": rel, "reason": f"symlink to a folder outside {root}; not followed"})
        for name in filenames:
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = path.relative_to(root).as_posix()
            problem = _link_problem(path, real_root, root) if path.is_symlink() else None
            if problem:
                skipped.append({"path": rel, "reason": problem})
            elif path.is_file():
                paths.append(rel)
    return sorted(paths), sorted(skipped, key=lambda s: s["path"])


def _link_problem(path: Path, real_root: Path, root: Path) -> str | None:
    """Why the symlinked file ``path`` is not indexed (its target missing, a loop, a target outside
    ``root``), or None when it may be."""
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        return "symlink to a missing file; not indexed"
    except (OSError, RuntimeError):
        return "symlink loop; not followed"
    return None if target.is_relative_to(real_root) else f"symlink to a file outside {root}; not followed"


def _inside(path: Path, real_root: Path) -> bool:
    """True if ``path`` with every symlink resolved lies inside ``real_root``."""
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def scan_images(root: str | Path) -> list[str]:
    """Paths (relative to ``root``, POSIX, sorted) of every jpg/png/webp file below ``root`` (see
    ``scan_collection``: symlinks out of ``root`` are left out)."""
    return scan_collection(root)[0]


def open_inside(root: str | Path, rel: str) -> int:
    """A read-only descriptor of the regular file ``root/rel``, which must lie inside ``root`` once every
    symlink is resolved (a symlink between two files of ``root`` is fine, one out of it is not).

    Race-free: after resolving, the path is opened again folder by folder from ``root`` with
    ``O_NOFOLLOW``, so a file or folder swapped for a symlink after the check is never followed; a FIFO
    or device is refused without blocking. CbirError (one line) otherwise."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, real]) != real_root or real == real_root:
        raise CbirError(f"{rel} lies outside {root}")
    parts = Path(os.path.relpath(real, real_root)).parts
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        folder = os.open(real_root, flags | os.O_DIRECTORY)
        for part in parts[:-1]:
            try:
                child = os.open(part, flags | os.O_DIRECTORY, dir_fd=folder)
            finally:
                os.close(folder)
            folder = child
        try:
            fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=folder)
        finally:
            os.close(folder)
    except OSError as err:
        raise CbirError(f"{rel} cannot be opened inside {root} ({err.strerror or err})") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CbirError(f"{rel} is not a regular file")
    return fd


def open_indexed(root: str | Path, item: dict) -> BinaryIO:
    """The indexed file of ``item`` (``path`` relative to ``root``, ``size``, ``mtime_ns``) opened for
    reading (:func:`open_inside`), only if it still has the size and modification time recorded at index
    time; CbirError (one line) otherwise. The caller closes the file."""
    fd = open_inside(root, item["path"])
    found = os.fstat(fd)
    if (found.st_size, found.st_mtime_ns) != (item.get("size"), item.get("mtime_ns")):
        os.close(fd)
        raise CbirError(f"{item['path']} changed since it was indexed; re-index")
    return os.fdopen(fd, "rb")


def open_image(
    src: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS, size: int | None = None
) -> Image.Image:
    """A fully decoded PIL image; CbirError naming the file if it is unreadable, corrupt or too large
    (more than ``max_pixels`` pixels, read from the header; default Pillow's decompression-bomb limit).
    ``size``: a large JPEG is decoded reduced to what a model resizing to ``size`` needs (``reduce_for``)."""
    label = name or ("<uploaded image>" if isinstance(src, bytes) else str(src))
    try:
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
    except OSError as err:
        raise CbirError(f"{label}: cannot read image ({err.strerror or err})") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise Image.DecompressionBombError(
                    f"{image.width}x{image.height} pixels, more than the limit of {max_pixels}"
                )
            reduce_for(image, size)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise CbirError(f"{label}: image too large ({err}); resize it first") from err
    except Image.UnidentifiedImageError as err:
        raise CbirError(
            f"{label}: corrupt or unsupported image (not an image Pillow can read); replace or remove it"
        ) from err
    except Exception as err:  # Pillow raises many types for corrupt data
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise CbirError(
            f"{label}: corrupt or unsupported image ({reason}); replace or remove the file"
        ) from err
    return image


def parse_crop(crop: str | list | tuple | None) -> tuple[int, int, int, int] | None:
    """``"x0,y0,x1,y1"`` (pixels) as a tuple of ints; CbirError (one line) if it is not four finite,
    non-negative numbers with x0 < x1 and y0 < y1."""
    if crop is None or crop == "":
        return None
    parts = crop.split(",") if isinstance(crop, str) else list(crop) if isinstance(crop, list | tuple) else []
    try:
        numbers = [float(v) for v in parts]
        box = tuple(int(round(v)) for v in numbers) if all(math.isfinite(v) for v in numbers) else ()
    except (TypeError, ValueError, OverflowError):
        box = ()
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1] or min(box) < 0:
        shown = " ".join(repr(crop).split())[:80]
        raise CbirError(f"--crop must be x0,y0,x1,y1 in pixels with x0 < x1 and y0 < y1, got {shown}")
    return box


def crop_image(image: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    if box is None:
        return image
    x0, y0, x1, y1 = box
    if x1 > image.width or y1 > image.height:
        raise CbirError(f"crop {box} lies outside the {image.width}x{image.height} query image")
    return image.crop(box)
