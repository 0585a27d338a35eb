"""Stanford Dogs DataModule (Khosla et al. 2011) on the release's own files and official splits.

Layout under ``root``: ``Images/<wnid>-<breed>/<wnid>_<n>.jpg``, ``Annotation/<wnid>-<breed>/<wnid>_<n>``
(PASCAL VOC XML) and ``lists/train_list.mat``, ``lists/test_list.mat``. Each image is cropped to its dog's
bounding box (the largest box when an image has several dogs; a box reaching outside the image is clamped
with a warning), optionally converted to grayscale, resized to ``image_size`` square and kept in memory as
uint8. Training: breed-level pairs ``(x1, x2, same)`` or class batches ``(images, labels)``. Evaluation:
the test split, each image against all others (``database: test``), or test queries against a training
database (``database: train``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cbir_lightning.errors import CbirError
from data_modules.datasets.image_folders import read_image, to_uint8
from data_modules.datasets.indexed_images import IndexedImages
from data_modules.labelled_images import LabelledImagesDataModule
from data_modules.sampling.pairs import check_sampling
from data_modules.sampling.retrieval_split import query_database_items
from data_modules.stanford_dogs.files import DogsList, read_box, read_list


def first_per_label(labels: np.ndarray, count: int | None) -> np.ndarray:
    """Positions of the first ``count`` items of each label (all if None), in list order."""
    if count is None:
        return np.arange(len(labels))
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(labels.tolist()):
        if seen.get(label, 0) < count:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


class StanfordDogsDataModule(LabelledImagesDataModule):
    """Args:
    root: folder holding ``Images/``, ``Annotation/`` and ``lists/``.
    image_size: side of the square images (after cropping).
    grayscale: convert to one channel (the Koch net); otherwise RGB.
    crop: crop each image to its dog's box (the largest if several).
    train_per_class / test_per_class: use only the first images of each breed in the official lists.
    database: ``"test"``: evaluate test images against each other; ``"train"``: test queries against
        the training images (``database_per_class`` of each breed).
    sampling / batch_size / classes_per_batch / samples_per_class / epoch_length / augment: training
        samples (see :class:`~data_modules.CIFAR10DataModule`).
    mean / std: per-channel normalisation (one value per channel); ``null``: images in [0, 1].
    """

    name = "Stanford Dogs"

    def __init__(
        self,
        root: str | Path = "data/stanford_dogs",
        image_size: int = 105,
        grayscale: bool = True,
        crop: bool = True,
        train_per_class: int | None = None,
        test_per_class: int | None = None,
        database: Literal["test", "train"] = "test",
        database_per_class: int | None = None,
        sampling: Literal["pairs", "class_batches"] = "class_batches",
        batch_size: int = 64,
        classes_per_batch: int = 32,
        samples_per_class: int = 2,
        epoch_length: int = 200,
        augment: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        whitening_pairs: int = 20000,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_sampling(sampling, classes_per_batch, samples_per_class)
        if database not in ("test", "train"):
            raise CbirError(f"database must be 'test' or 'train', got {database!r}")
        channels = 1 if grayscale else 3
        if (mean is None) != (std is None) or (mean is not None and (len(mean), len(std)) != (channels,) * 2):
            raise CbirError(f"mean and std must both be {channels} numbers (one per channel) or both null")
        self.mean, self.std = mean, std

    @property
    def mode(self) -> str:
        return "L" if self.hparams.grayscale else "RGB"

    def _read_split(self, name: str, per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        root = Path(self.hparams.root)
        listing: DogsList = read_list(root / "lists" / f"{name}_list.mat")
        keep = first_per_label(listing.labels, per_class)
        images = []
        for i in keep.tolist():
            path = root / "Images" / listing.files[i]
            if not path.is_file():
                raise CbirError(f"{path} (listed in lists/{name}_list.mat) not found; re-extract images.tar")
            image = read_image(path, self.mode)
            if self.hparams.crop:
                annotation = root / "Annotation" / listing.annotations[i]
                if not annotation.is_file():
                    raise CbirError(f"{annotation} not found; re-extract annotation.tar or set crop: false")
                image = image.crop(read_box(annotation, *image.size))
            images.append(to_uint8(image, self.hparams.image_size))
        if not images:
            raise CbirError(f"{root / 'lists' / f'{name}_list.mat'} lists no images")
        return torch.stack(images), torch.from_numpy(listing.labels[keep])

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        hp = self.hparams
        if not (Path(hp.root) / "lists").is_dir():
            raise CbirError(
                f"{hp.root} has no lists/ folder; expected the Stanford Dogs release (Images/, Annotation/, "
                "lists/ from images.tar, annotation.tar, lists.tar) under data.init_args.root"
            )
        self.train = self._read_split("train", hp.train_per_class)
        test_x, test_y = self._read_split("test", hp.test_per_class)
        if hp.database == "train":
            d = torch.from_numpy(first_per_label(self.train[1].numpy(), hp.database_per_class))
            self.eval_items, self.retrieval_split = query_database_items(
                test_x, test_y, self.train[0][d], self.train[1][d]
            )
        else:
            self.eval_items, self.retrieval_split = IndexedImages(test_x, test_y), None
