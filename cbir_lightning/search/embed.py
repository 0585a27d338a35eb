"""Embedding image files: decoding (``search.files.Decoding``) and the one embedding route,
:func:`cbir_lightning.inference.embed_dataset`, with the model's module (checkpoint, model file) or its
ONNX Runtime session (export): the two differ only in the function that maps a batch to vectors.

Files are put in order of the tensor shape the preprocessing gives for their header's mode and size, so
nearly every batch stacks into one forward pass (``embed_dataset`` splits a batch across two shapes); a
file that fails to decode yields a blank image and label -1. Devices and DDP come from Lightning Fabric
(``accelerator``, ``devices``, ``strategy``, ``num_nodes``: its launcher starts the worker processes as
Lightning's Trainer does); under DDP each rank embeds a shard and ``embed_dataset`` all-gathers the rows in
order on every rank.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
from lightning_fabric import Fabric
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from cbir_lightning.errors import CbirError
from cbir_lightning.inference import embed_dataset
from cbir_lightning.search.files import FULL, Decoding, open_image, reduce_for

DEVICE_OPTIONS = ("accelerator", "devices", "strategy", "num_nodes")  # Lightning Fabric's arguments
OPTIONS = (*DEVICE_OPTIONS, "enable_progress_bar")
PROGRESS = "Embedding"  # the progress bar's title


def image_header(path: Path, decoding: Decoding = FULL) -> tuple[str, int, int] | str:
    """``(mode, width, height)`` the file decodes to under ``decoding`` (a large JPEG's reduced size), from
    the header, or the reason it is not indexed (not an image, more pixels than ``decoding.max_pixels``)."""
    try:
        with Image.open(path) as image:
            limit = decoding.max_pixels
            if image.width * image.height > limit:
                return f"image too large ({image.width}x{image.height} pixels, limit {limit})"
            reduce_for(image, decoding.size)
            return image.mode, image.width, image.height
    except Image.UnidentifiedImageError:
        return "not an image Pillow can read (corrupt or another format)"
    except Exception as err:
        return " ".join(f"{type(err).__name__}: {err}".split())[:200]


class ImageFiles(Dataset):
    """Items ``(image [C, H, W], label)`` of files: label 0, or -1 (a blank image of the header's size)
    when the file cannot be decoded as its header said (corrupt, vanished or changed since)."""

    def __init__(self, paths: list[Path], headers: list, transform, decoding: Decoding = FULL) -> None:
        self.paths, self.headers, self.transform, self.decoding = paths, headers, transform, decoding

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, i: int) -> Image.Image:
        """File ``i`` decoded as its header said; CbirError if it cannot be, or changed since."""
        image = open_image(self.paths[i], None, self.decoding.max_pixels, self.decoding.size)
        if (image.mode, *image.size) != tuple(self.headers[i]):
            raise CbirError(f"{self.paths[i]} changed while being indexed")
        return image

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        try:
            return self.transform(self._decode(i)), 0
        except CbirError:
            mode, width, height = self.headers[i]
            return self.transform(Image.new(mode, (width, height))), -1


def shape_order(headers: list, transform) -> list[int]:
    """Positions of the files grouped by the tensor shape ``transform`` gives for their header (that of a
    blank image of the header's mode and size): groups in order of first appearance, positions ascending."""
    shapes: dict[tuple, tuple] = {}
    groups: dict[tuple, list[int]] = {}
    for i, header in enumerate(headers):
        header = tuple(header)
        if header not in shapes:
            shapes[header] = tuple(transform(Image.new(header[0], header[1:])).shape)
        groups.setdefault(shapes[header], []).append(i)
    return [i for members in groups.values() for i in members]


def check_options(options: dict | None) -> dict:
    """``options`` (``index``'s device settings) with the defaults; CbirError for any other key."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise CbirError(f"unknown option {unknown[0]!r} for embedding files; known: {', '.join(OPTIONS)}")
    defaults = {"accelerator": "auto", "devices": 1, "strategy": "auto", "num_nodes": 1}
    return {**defaults, "enable_progress_bar": True, **options}


def launch(options: dict):
    """A launched Lightning Fabric of ``options`` (``DEVICE_OPTIONS``): under DDP it starts the worker
    processes (which run the same command) and initialises the process group."""
    fabric = Fabric(**{key: options[key] for key in DEVICE_OPTIONS})
    fabric.launch()
    return fabric


def embed_files(
    model,
    paths: list[Path],
    headers: list,
    batch_size: int = 32,
    decoding: Decoding = FULL,
    options: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """``(vectors [n, D], labels [n] (0 ok, -1 unreadable))`` of the files, in order, on the CPU:
    ``model``'s index vectors (a ``SearchModel``: its module on the device ``options`` name, then its
    whitening; an ``OnnxSearchModel``: its session on the CPU, no devices) of the files decoded as
    ``decoding`` says, as their ``headers`` from :func:`image_header` with it. Under DDP (``options``)
    every rank returns all the rows."""
    options = check_options(options)
    progress = PROGRESS if options["enable_progress_bar"] else None
    runner = model.embedding_model
    if isinstance(runner, torch.nn.Module):  # ONNX Runtime runs in this process, on the CPU
        runner.to(launch(options).device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        check_same_files(paths, headers)
    files = ImageFiles(paths, headers, model.transform, decoding)
    order = torch.tensor(shape_order(headers, model.transform), dtype=torch.long)
    raw, labels = embed_dataset(runner, files, order, batch_size=batch_size, progress=progress, labels=True)
    vectors = torch.empty_like(raw)
    vectors[order.to(raw.device)] = raw
    found = torch.empty_like(labels)
    found[order.to(labels.device)] = labels
    return model.post_process(vectors.cpu()), found.cpu()


def check_same_files(paths: list[Path], headers: list) -> None:
    """CbirError on every rank unless every DDP rank embeds the same files (gathered digests)."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, file_list_digest(paths, headers))
    if len(set(gathered)) > 1:
        raise CbirError(
            "the DDP processes of `cbir-lightning index` saw different image files (the folder changed "
            "while they started); run the same command again"
        )


def file_list_digest(paths: list[Path], headers: list) -> str:
    """A digest of the files (and headers) one rank embeds, in order: equal on every rank or the gathered
    indices would name other files."""
    digest = hashlib.sha256()
    for path, header in zip(paths, headers, strict=True):
        digest.update(f"{path}\0{list(header)}\n".encode())
    return digest.hexdigest()


def is_launched_worker() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (every rank but global rank 0): they
    embed their shard and hand it to rank 0, which alone writes the index."""
    return int(os.environ.get("LOCAL_RANK", 0)) != 0 or int(os.environ.get("NODE_RANK", 0)) != 0
