"""Class batches decoded from photo files on access (DataLoader workers decode in parallel).

``StreamedClassBatches[key]`` is ``(images [P*K, 3, s, s], labels [P*K])``: ``P = classes_per_batch``
classes, ``K = samples_per_class`` photos of each, drawn from a generator seeded by ``(seed, key)``
(:func:`~data_modules.sampling.samplers.item_generator`), so the batch is the same for any number of
workers or ranks. Only the paths are held in memory. Training photos get a random resized crop (area 35-100 %,
aspect 3/4-4/3) and a horizontal flip drawn from the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from cbir_lightning.contracts import ClassBatch
from data_modules.datasets.photo_files import Box, load_cropped
from data_modules.sampling.samplers import item_generator


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def random_resized_crop(
    image: Image.Image, size: int, gen: torch.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)
) -> Image.Image:
    """A crop of ``scale`` of the area and ``ratio`` aspect (10 tries; else the central square), resized
    to ``size`` x ``size``, mirrored with probability 1/2."""
    width, height = image.size
    box = None
    for _ in range(10):
        area = width * height * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(torch.randint(width - w + 1, (), generator=gen))
            y0 = int(torch.randint(height - h + 1, (), generator=gen))
            box = (x0, y0, x0 + w, y0 + h)
            break
    if box is None:
        side = min(width, height)
        box = ((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2)
    crop = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if float(torch.rand((), generator=gen)) < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


class StreamedClassBatches(Dataset):
    """Args:
    paths / labels: the training photos and their class indices (0..C-1).
    length: batches per epoch (keys are ``epoch * length + i``, see EpochSampler).
    to_tensor: PIL image (already ``image_size`` square) -> normalised tensor.
    augment: random resized crop + flip; otherwise the evaluation view ``eval_view``.
    boxes: per photo, a box to crop to first (see :func:`~data_modules.datasets.photo_files.load_cropped`).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: torch.Tensor,
        length: int,
        seed: int,
        image_size: int,
        to_tensor: Callable[[Image.Image], torch.Tensor],
        eval_view: Callable[[Image.Image], Image.Image],
        classes_per_batch: int,
        samples_per_class: int,
        augment: bool = True,
        boxes: Sequence[Box] | None = None,
    ) -> None:
        self.paths, self.labels = list(paths), labels
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        self.length, self.seed, self.image_size = int(length), int(seed), int(image_size)
        self.to_tensor, self.eval_view, self.augment = to_tensor, eval_view, augment
        counts = torch.bincount(labels)
        order = torch.argsort(labels, stable=True)
        self.members = [m for m in torch.split(order, counts.tolist()) if len(m)]
        self.classes = [int(labels[m[0]]) for m in self.members]
        self.classes_per_batch, self.samples_per_class = classes_per_batch, samples_per_class

    def __len__(self) -> int:
        return self.length

    def _pick(self, members: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        k = self.samples_per_class
        if k <= len(members):
            return members[torch.randperm(len(members), generator=gen)[:k]]
        return members[torch.randint(len(members), (k,), generator=gen)]

    def _view(self, i: int, gen: torch.Generator) -> torch.Tensor:
        image = load_cropped(self.paths[i], self.boxes[i])
        view = random_resized_crop(image, self.image_size, gen) if self.augment else self.eval_view(image)
        return self.to_tensor(view)

    def __getitem__(self, key: int) -> ClassBatch:
        gen = item_generator(self.seed, key)
        chosen = torch.randperm(len(self.members), generator=gen)[: self.classes_per_batch]
        index = torch.cat([self._pick(self.members[int(c)], gen) for c in chosen])
        images = torch.stack([self._view(int(i), gen) for i in index])
        return ClassBatch(images, self.labels[index])
