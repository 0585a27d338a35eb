"""Class batches decoded from photo files on access (DataLoader workers decode in parallel).

``StreamedClassBatches[key]`` is ``(images [P*K, 3, s, s], labels [P*K])``: ``P = classes_per_batch``
classes, ``K = samples_per_class`` photos of each, drawn from a generator seeded by ``(seed, key)``
(:func:`~data_modules.sampling.samplers.item_generator`), so the batch is the same for any number of
workers or ranks. Only the paths are held in memory. Training photos get a random resized crop (area 35-100 %,
aspect 3/4-4/3) and a horizontal flip drawn from the same generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from cbir_lightning.contracts import ClassBatch
from data_modules.datasets.photo_files import Box, load_cropped
from data_modules.sampling.samplers import class_batch, item_generator
from data_modules.transforms.crops import random_resized_crop


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

    def _view(self, i: int, gen: torch.Generator) -> torch.Tensor:
        image = load_cropped(self.paths[i], self.boxes[i])
        view = random_resized_crop(image, self.image_size, gen) if self.augment else self.eval_view(image)
        return self.to_tensor(view)

    def __getitem__(self, key: int) -> ClassBatch:
        gen = item_generator(self.seed, key)
        index = class_batch(self.members, self.classes_per_batch, self.samples_per_class, gen)
        images = torch.stack([self._view(int(i), gen) for i in index])
        return ClassBatch(images, self.labels[index])
