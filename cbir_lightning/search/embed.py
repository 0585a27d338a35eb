"""Embedding image files through Lightning's predict loop (so devices, DDP and progress bars work).

Files are grouped by the tensor shape the evaluation transform gives for their header's mode and size,
so every batch stacks; one dataset item is one batch (``batch_size=None`` loader), which
DistributedSampler shards unchanged; under DDP the shards are gathered on every rank. A file that
fails to decode yields a blank image and label -1.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cbir_lightning.errors import CbirError
from cbir_lightning.inference import in_index_order
from cbir_lightning.search.files import FULL, Decoding, open_image, reduce_for


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


class ImageBatches(Dataset):
    """Batches ``(images [b, C, H, W], labels [b] (0 ok, -1 unreadable), indices [b])`` of files."""

    def __init__(
        self,
        paths: list[Path],
        headers: list[tuple[str, int, int]],
        transform,
        batch_size: int,
        decoding: Decoding = FULL,
    ):
        self.paths, self.headers, self.transform, self.decoding = paths, headers, transform, decoding
        shapes: dict[tuple, tuple] = {}  # header -> transformed shape (of a blank image of that header)
        groups: dict[tuple, list[int]] = {}
        for i, header in enumerate(headers):
            if header not in shapes:
                shapes[header] = tuple(transform(Image.new(header[0], header[1:])).shape)
            groups.setdefault(shapes[header], []).append(i)
        self.batches = [
            members[start : start + batch_size]
            for members in groups.values()
            for start in range(0, len(members), batch_size)
        ]

    def __len__(self) -> int:
        return len(self.batches)

    def _decode(self, i: int) -> Image.Image:
        """File ``i`` decoded as its header said; CbirError if it cannot be, or changed since."""
        limit, size = self.decoding.max_pixels, self.decoding.size
        image = open_image(self.paths[i], None, limit, size)
        if (image.mode, *image.size) != tuple(self.headers[i]):
            raise CbirError(f"{self.paths[i]} changed while being indexed")
        return image

    def __getitem__(self, b: int):
        images, labels = [], []
        for i in self.batches[b]:
            mode, width, height = self.headers[i]
            try:
                image, label = self._decode(i), 0
            except CbirError:
                image, label = Image.new(mode, (width, height)), -1
            images.append(self.transform(image))
            labels.append(label)
        try:
            stacked = torch.stack(images)
        except RuntimeError as err:
            raise CbirError(
                f"the DataModule's eval_transform gave different tensor sizes for images of one size "
                f"({self.paths[self.batches[b][0]]}...): {err}"
            ) from err
        return stacked, torch.tensor(labels), torch.tensor(self.batches[b])


def predict_embeddings(
    module,
    paths: list[Path],
    headers,
    transform,
    batch_size: int = 32,
    trainer_options: dict | None = None,
    decoding: Decoding = FULL,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(embeddings [n, D], labels [n], indices [n])`` of the files (decoded as ``decoding`` says, as
    their ``headers`` from :func:`image_header` with it), in index order."""
    import pytorch_lightning as pl

    batches = ImageBatches(paths, headers, transform, batch_size, decoding)
    loader = DataLoader(batches, batch_size=None, num_workers=0)
    options = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        **(trainer_options or {}),
    }
    if options.get("enable_progress_bar", True) and "callbacks" not in options:
        # tqdm's bar whether or not `rich` is installed (Lightning picks Rich's when it is): the same output
        options["callbacks"] = [pl.callbacks.TQDMProgressBar()]
    trainer = pl.Trainer(**options)
    outputs = trainer.predict(module, loader) or []
    parts = [(o["embeddings"].float().cpu(), o["labels"].cpu(), o["indices"].cpu()) for o in outputs]
    if trainer.world_size > 1:
        # each rank predicted a shard of the batches (DistributedSampler may repeat a few): collect all,
        # with each rank's file list, since the indices mean something only if every rank had the same
        import torch.distributed as dist

        gathered: list = [None] * trainer.world_size
        dist.all_gather_object(gathered, (file_list_digest(paths, headers), parts))
        if len({digest for digest, _ in gathered}) > 1:
            raise CbirError(
                "the DDP processes of `cbir-lightning index` saw different image files (the folder changed "
                "while they started); run the same command again"
            )
        parts = [part for _, rank_parts in gathered for part in rank_parts]
    embeddings, labels, indices = (torch.cat([p[k] for p in parts]) for k in range(3))
    keep = in_index_order(indices)
    return embeddings[keep], labels[keep], indices[keep]


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
