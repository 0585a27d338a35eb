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
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from data_modules.augment import AffineRanges
from data_modules.errors import DataError
from data_modules.image_folders import read_image, to_uint8
from data_modules.normalize import NormalizedItems, normalize
from data_modules.omniglot import IndexedImages
from data_modules.pairs import ClassBatchDataset, PairDataset
from data_modules.retrieval_split import balanced_pairs, query_database_items
from data_modules.samplers import EpochSampler
from data_modules.stanford_dogs_files import DogsList, read_box, read_list


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


class StanfordDogsDataModule(pl.LightningDataModule):
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
        if sampling not in ("pairs", "class_batches"):
            raise DataError(f"sampling must be 'pairs' or 'class_batches', got {sampling!r}")
        if database not in ("test", "train"):
            raise DataError(f"database must be 'test' or 'train', got {database!r}")
        channels = 1 if grayscale else 3
        if (mean is None) != (std is None) or (mean is not None and (len(mean), len(std)) != (channels,) * 2):
            raise DataError(f"mean and std must both be {channels} numbers (one per channel) or both null")
        self.train: tuple[torch.Tensor, torch.Tensor] | None = None
        self.eval_items: IndexedImages | None = None
        self.retrieval_split: torch.Tensor | None = None

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
                raise DataError(f"{path} (listed in lists/{name}_list.mat) not found; re-extract images.tar")
            image = read_image(path, self.mode)
            if self.hparams.crop:
                annotation = root / "Annotation" / listing.annotations[i]
                if not annotation.is_file():
                    raise DataError(f"{annotation} not found; re-extract annotation.tar or set crop: false")
                image = image.crop(read_box(annotation, *image.size))
            images.append(to_uint8(image, self.hparams.image_size))
        if not images:
            raise DataError(f"{root / 'lists' / f'{name}_list.mat'} lists no images")
        return torch.stack(images), torch.from_numpy(listing.labels[keep])

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        hp = self.hparams
        if not (Path(hp.root) / "lists").is_dir():
            raise DataError(
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

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        self.setup("fit")
        images, labels = self.train
        augment = AffineRanges() if hp.augment else None
        try:
            if hp.sampling == "pairs":
                data = PairDataset(images, labels, hp.epoch_length * hp.batch_size, hp.seed, augment)
                batch_size = hp.batch_size
            else:
                data = ClassBatchDataset(
                    images,
                    labels,
                    hp.epoch_length,
                    hp.seed,
                    augment,
                    classes_per_batch=hp.classes_per_batch,
                    samples_per_class=hp.samples_per_class,
                )
                batch_size = None
        except ValueError as err:
            raise DataError(f"Stanford Dogs training split under {hp.root}: {err}") from err
        return self._loader(data, EpochSampler(len(data)), batch_size)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.eval_items, None, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        """An (already cropped) image as the evaluation loader gives it: grayscale or RGB, ``image_size``
        square (area averaging), float in [0, 1], normalised if ``mean``/``std`` are set."""
        hp = self.hparams
        x = to_uint8(image.convert(self.mode), hp.image_size).float().div(255)
        return normalize(x, hp.mean, hp.std) if hp.mean is not None else x

    def whitening_data(self) -> tuple[Dataset, torch.Tensor]:
        """Training images (evaluation transform) and up to ``whitening_pairs`` same-breed pairs."""
        self.setup("fit")
        images, labels = self.train
        pairs = balanced_pairs(labels, self.hparams.whitening_pairs, self.hparams.seed)
        return NormalizedItems(IndexedImages(images, labels), self.hparams.mean, self.hparams.std), pairs

    def _loader(self, data: Dataset, sampler, batch_size: int | None) -> DataLoader:
        return DataLoader(
            NormalizedItems(data, self.hparams.mean, self.hparams.std),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            shuffle=False,
        )
