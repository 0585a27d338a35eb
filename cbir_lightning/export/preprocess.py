"""The evaluation preprocessing of a DataModule as data (a ``spec`` dict stored in the ONNX metadata), and
a pure function that applies it, so an exported model embeds images without its DataModule.

A spec is ``{"mode": "L"|"RGB", "invert": bool, "resize": "area"|"bilinear"|"centre_square"|"fit",
"size": S, "mean": [..] | None, "std": [..] | None}``:

* ``area``: the image's pixels resized to ``S x S`` by area averaging, rounded to uint8 (Omniglot,
  CIFAR-10, Stanford Dogs: ``resize_uint8``);
* ``bilinear``: PIL bilinear resize to ``S x S`` (``PhotoTransform(keep_aspect=False)``);
* ``centre_square``: shorter side to ``S``, central square (``PhotoCollectionDataModule``);
* ``fit``: PIL LANCZOS thumbnail within ``S x S``, aspect kept (``PhotoTransform(keep_aspect=True)``:
  landmarks, SfM), so the tensor's height and width vary.

A DataModule gives its spec (``preprocess_spec()``, read by ``spec_of_datamodule``) and ``check_spec``
proves, on synthetic images, that ``preprocess`` gives exactly what the DataModule's ``eval_transform``
gives.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cbir_lightning.errors import CbirError

RESIZES = ("area", "bilinear", "centre_square", "fit")


def spec_of_datamodule(datamodule) -> dict:
    """The preprocessing spec of a DataModule's ``eval_transform`` (its ``preprocess_spec()``, see
    :class:`~cbir_lightning.contracts.RetrievalData`); CbirError if it has none."""
    spec = getattr(datamodule, "preprocess_spec", lambda: None)()
    if spec is None:
        raise CbirError(
            f"{type(datamodule).__name__} does not describe its eval_transform (preprocess_spec() is None); "
            "it cannot be exported or written to a model file"
        )
    return spec


def _area_uint8(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[C, h, w]`` -> ``[C, size, size]`` by area averaging, rounded (as ``resize_uint8``)."""
    if pixels.shape[-2:] == (size, size):
        return pixels
    out = F.interpolate(pixels[None].float(), size=(size, size), mode="area")[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def _pil_resize(image: Image.Image, resize: str, size: int) -> Image.Image:
    if resize == "bilinear":
        return image.resize((size, size), Image.Resampling.BILINEAR)
    if resize == "centre_square":
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
    if resize == "fit":
        image = image.copy()
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        return image
    return image


def preprocess(image: Image.Image, spec: dict) -> torch.Tensor:
    """A PIL image -> float ``[C, H, W]`` as the spec's DataModule ``eval_transform`` gives it."""
    if spec["resize"] not in RESIZES:
        raise CbirError(f"unknown resize {spec['resize']!r} in the model's preprocessing metadata")
    image = _pil_resize(image.convert(spec["mode"]), spec["resize"], int(spec["size"]))
    array = np.asarray(image)
    if spec.get("invert"):
        array = np.invert(array)
    pixels = torch.from_numpy(array.copy())
    pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    if spec["resize"] == "area":
        pixels = _area_uint8(pixels, int(spec["size"]))
    x = pixels.float().div(255)
    if spec.get("mean") is not None:
        mean = torch.tensor(spec["mean"], dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(spec["std"], dtype=x.dtype).view(-1, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def sample_images() -> list[Image.Image]:
    """Synthetic images of several modes, sizes and aspect ratios (deterministic)."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB"),
        Image.fromarray(rng.integers(0, 256, (90, 41), dtype=np.uint8), "L"),
        Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), "RGB"),
    ]


def check_spec(spec: dict, transform, images: list[Image.Image] | None = None) -> float:
    """Max abs difference between ``preprocess`` and ``transform`` on ``images`` (default
    ``sample_images()``); CbirError if a shape differs or the difference exceeds 1e-6."""
    worst = 0.0
    for image in images or sample_images():
        ours, theirs = preprocess(image, spec), transform(image)
        if ours.shape != theirs.shape:
            raise CbirError(
                f"the recorded preprocessing gives shape {tuple(ours.shape)} where eval_transform gives "
                f"{tuple(theirs.shape)}; this DataModule cannot be exported"
            )
        worst = max(worst, float((ours - theirs.float()).abs().max()))
    if worst > 1e-6:
        raise CbirError(
            f"the recorded preprocessing differs from eval_transform by {worst:.3g}; cannot export"
        )
    return worst
