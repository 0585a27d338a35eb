"""Read a ``<split>/<class>/<image>`` folder tree into memory as square uint8 tensors, with one-line
errors for a wrong layout, an empty class folder or an unreadable image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbir_lightning.errors import CbirError
from data_modules.transforms.images import resize_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_image(path: Path, mode: str = "RGB") -> Image.Image:
    """Open and fully decode one image in ``mode``; CbirError naming the file if it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except Exception as exc:  # PIL raises many types for corrupt data
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CbirError(
            f"{path}: corrupt or unreadable image ({reason}); replace or delete the file"
        ) from exc


def to_uint8(image: Image.Image, size: int, method: str = "area") -> torch.Tensor:
    """A PIL image -> uint8 ``[C, size, size]`` (resized by ``method`` when the size differs, see
    :func:`~data_modules.transforms.images.resize_uint8`)."""
    array = np.asarray(image)
    tensor = (
        torch.from_numpy(array.copy()).unsqueeze(-1) if array.ndim == 2 else torch.from_numpy(array.copy())
    )
    return resize_uint8(tensor.permute(2, 0, 1)[None], size, method)[0]


def class_folders(split: Path) -> list[Path]:
    """Sorted class sub-folders of ``split``; CbirError if there are none."""
    if not split.is_dir():
        raise CbirError(f"{split} not found; expected class folders under it (<split>/<class>/<image>.jpg)")
    folders = sorted(p for p in split.iterdir() if p.is_dir())
    if not folders:
        raise CbirError(f"{split} holds no class folders; expected <split>/<class>/<image>.jpg")
    return folders


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CbirError(
            f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); remove it or add images"
        )
    return files


def read_image_folders(
    split: Path,
    size: int,
    classes: list[str] | None = None,
    per_class: int | None = None,
    mode: str = "RGB",
    method: str = "area",
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images ``uint8 [N, C, size, size]``, labels ``[N]`` (index into ``classes``) and the class names.

    ``classes``: the class order to use (e.g. the training split's); ``per_class``: keep the first
    ``per_class`` files (sorted by name) of each class; ``method``: see ``to_uint8``.
    """
    folders = class_folders(split)
    names = [f.name for f in folders]
    if classes is not None and sorted(names) != sorted(classes):
        raise CbirError(
            f"{split} has classes {names}, expected {classes}; use the same classes in every split"
        )
    order = classes if classes is not None else names
    images, labels = [], []
    for label, name in enumerate(order):
        for path in image_files(split / name)[:per_class]:
            images.append(to_uint8(read_image(path, mode), size, method))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels), list(order)
