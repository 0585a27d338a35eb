"""CIFAR-10 DataModule: Siamese training (class batches or pairs) on the training images, retrieval with
query = test images and database = training images (the deep-hashing protocol).

Two layouts under ``root`` (detected):

- torchvision's: ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` (pickled dicts with ``data``
  uint8 ``[N, 3072]``, rows R, G, B planes of 32 x 32, and ``labels``; ``download: true`` fetches it);
- image folders: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (as in ``../shared/data/cifar10``).

Images are kept in memory as uint8; loaders give float images in [0, 1] normalised with ``mean``/``std``
(ImageNet's by default, for pretrained backbones; ``null`` to leave them in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from cbir_lightning.errors import CbirError
from data_modules.cifar10.batches import BATCHES_DIR, read_cifar10_batches
from data_modules.datasets.image_folders import read_image_folders
from data_modules.labelled_images import LabelledImagesDataModule
from data_modules.sampling.pairs import check_sampling
from data_modules.sampling.retrieval_split import query_database_items
from data_modules.transforms.images import RESIZE_METHODS, resize_uint8
from data_modules.transforms.normalize import IMAGENET_MEAN, IMAGENET_STD


def first_per_class(labels: torch.Tensor, count: int | None) -> torch.Tensor:
    """Indices of the first ``count`` items of each label, in their original order (all if None)."""
    if count is None:
        return torch.arange(len(labels))
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        keep[(labels == label).nonzero().flatten()[:count]] = True
    return keep.nonzero().flatten()


class CIFAR10DataModule(LabelledImagesDataModule):
    """Args:
    root: folder holding ``cifar-10-batches-py/`` or ``train/`` and ``test/`` class folders.
    image_size: side the 32 px images are resized to.
    resize: ``area`` (averaging; enlarged images look blocky) or ``bilinear`` (PIL's, smooth: what an
        ImageNet backbone sees best).
    train_per_class: training images per class (first ones; ``None``: all).
    query_per_class / database_per_class: test images used as queries, training images used as the
        retrieval database (first ones; ``None``: all).
    sampling: ``"class_batches"`` (``classes_per_batch`` x ``samples_per_class`` images, every pair used)
        or ``"pairs"`` (``batch_size`` balanced pairs ``(x1, x2, same)``).
    epoch_length: training batches per epoch.
    augment: Koch's random affine distortions on training images.
    mean / std: channel normalisation (ImageNet's by default); ``null``: none.
    whitening_pairs: at most this many same-class training pairs for learned whitening.
    download: fetch torchvision's CIFAR-10 into ``root`` (needs the internet).
    """

    name = "CIFAR-10"

    def __init__(
        self,
        root: str | Path = "data/cifar10",
        image_size: int = 32,
        resize: str = "area",
        train_per_class: int | None = None,
        query_per_class: int | None = None,
        database_per_class: int | None = None,
        sampling: Literal["pairs", "class_batches"] = "class_batches",
        batch_size: int = 64,
        classes_per_batch: int = 10,
        samples_per_class: int = 16,
        epoch_length: int = 100,
        augment: bool = False,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        whitening_pairs: int = 20000,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_sampling(sampling, classes_per_batch, samples_per_class)
        if resize not in RESIZE_METHODS:
            raise CbirError(f"resize must be one of {', '.join(RESIZE_METHODS)}, got {resize!r}")
        if (mean is None) != (std is None) or (mean is not None and (len(mean), len(std)) != (3, 3)):
            raise CbirError("mean and std must both be 3 numbers (one per RGB channel) or both null")
        self.mean, self.std = mean, std
        self.classes: list[str] = []

    def prepare_data(self) -> None:
        if self.hparams.download:
            from torchvision.datasets import CIFAR10  # heavy import: only with download: true

            for train in (True, False):
                CIFAR10(str(self.hparams.root), train=train, download=True)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        hp = self.hparams
        root = Path(hp.root)
        if (root / BATCHES_DIR).is_dir():
            splits = read_cifar10_batches(root / BATCHES_DIR)
            self.classes = splits.pop("classes")
            if hp.image_size != 32:
                splits = {k: (resize_uint8(x, hp.image_size, hp.resize), y) for k, (x, y) in splits.items()}
        elif (root / "train").is_dir() and (root / "test").is_dir():
            # read only the images used (the first ones of each class)
            limits = (hp.train_per_class, hp.database_per_class)
            per_class = None if None in limits else max(limits)
            train_x, train_y, self.classes = read_image_folders(
                root / "train", hp.image_size, None, per_class, method=hp.resize
            )
            test_x, test_y, _ = read_image_folders(
                root / "test", hp.image_size, self.classes, hp.query_per_class, method=hp.resize
            )
            splits = {"train": (train_x, train_y), "test": (test_x, test_y)}
        else:
            raise CbirError(
                f"{root} holds neither {BATCHES_DIR}/ (torchvision's CIFAR-10) nor train/ and test/ class "
                "folders; run `make data`, point data.init_args.root at the data or set download: true"
            )
        self.class_names = self.classes
        train_x, train_y = splits["train"]
        test_x, test_y = splits["test"]
        keep = first_per_class(train_y, hp.train_per_class)
        self.train = (train_x[keep], train_y[keep])
        q = first_per_class(test_y, hp.query_per_class)
        d = first_per_class(train_y, hp.database_per_class)
        self.eval_items, self.retrieval_split = query_database_items(
            test_x[q], test_y[q], train_x[d], train_y[d]
        )
