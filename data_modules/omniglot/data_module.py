"""Omniglot DataModule: Siamese training pairs or class batches, N-way one-shot episodes and a
query/database retrieval split, on alphabets never seen in training.

Images are read once (from folders or straight from the zips, see :mod:`data_modules.omniglot.files`),
resized with antialiasing to ``image_size`` and kept in memory as uint8 tensors; workers share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cbir_lightning.errors import CbirError
from cbir_lightning.pixels import display_pixels
from data_modules.base import RetrievalDataModule
from data_modules.datasets.indexed_images import IndexedImages
from data_modules.omniglot.download import download_omniglot
from data_modules.omniglot.files import SMALL_SETS, OmniglotImages, read_omniglot
from data_modules.sampling.episodes import Episodes, make_episodes
from data_modules.sampling.pairs import check_sampling, training_samples
from data_modules.sampling.samplers import EpochSampler, loader
from data_modules.transforms.augment import AffineRanges
from data_modules.transforms.images import resize_uint8


class OmniglotDataModule(RetrievalDataModule):
    """Omniglot in torchvision's layout under ``root``.

    Args:
        root: folder holding ``omniglot-py/<set>/`` folders or ``<set>.zip`` files.
        sets: which sets to read (default: the two small background sets).
        val_alphabets: alphabets held out for evaluation (never trained on). ``None``: none held out.
        train_alphabets: alphabets to train on; ``None``: every other alphabet of ``sets``.
        train_drawers / val_drawers: drawers (1..20) to use on each side; ``None``: all. When both are
            given and disjoint, an alphabet may be on both sides: validation then sees the training
            characters drawn by other people (``val_alphabets`` equal to ``train_alphabets`` validates
            a model that trains on every character).
        image_size: side in pixels the 105 px images are resized to.
        sampling: ``"pairs"`` (Koch: one balanced pair per sample, ``batch_size`` pairs per batch) or
            ``"class_batches"`` (``classes_per_batch`` x ``samples_per_class`` images, every pair used).
        alphabets_per_batch: class batches draw their classes from this many random alphabets (each
            orientation of an alphabet counted apart; more alphabets when they hold fewer than
            ``classes_per_batch`` classes), so a batch's negatives share an alphabet as in Lake's
            within-alphabet 20-way runs. ``None``: classes drawn from all alphabets alike.
        rotation_classes: add the 90/180/270 degree rotations of training characters as new classes.
        reflection_classes: add the mirror images of training characters (and of their rotations) as
            new classes.
        epoch_length: training batches per epoch (both samplings).
        augment: Koch's affine distortions on training images.
        ways / shots / trials / episode_seed: the one-shot validation protocol (fixed across epochs).
        download: fetch missing sets (torchvision's Omniglot download; needs the internet).
    """

    def __init__(
        self,
        root: str | Path = "data/omniglot",
        sets: Sequence[str] = SMALL_SETS,
        val_alphabets: Sequence[str] | None = ("Japanese_(katakana)", "Sanskrit"),
        train_alphabets: Sequence[str] | None = None,
        train_drawers: Sequence[int] | None = None,
        val_drawers: Sequence[int] | None = None,
        image_size: int = 105,
        sampling: Literal["pairs", "class_batches"] = "class_batches",
        batch_size: int = 128,
        classes_per_batch: int = 32,
        samples_per_class: int = 4,
        alphabets_per_batch: int | None = None,
        rotation_classes: bool = False,
        reflection_classes: bool = False,
        epoch_length: int = 200,
        augment: bool = True,
        ways: int = 20,
        shots: int = 1,
        trials: int = 400,
        episode_seed: int = 0,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_sampling(sampling, classes_per_batch, samples_per_class)
        if alphabets_per_batch is not None and (alphabets_per_batch < 1 or sampling != "class_batches"):
            raise CbirError(
                f"data.init_args.alphabets_per_batch is {alphabets_per_batch}: it needs sampling: "
                "class_batches and a count of 1 or more (null: classes from every alphabet)"
            )
        self.train_images: OmniglotImages | None = None
        self.val_images: OmniglotImages | None = None
        self.episodes: Episodes | None = None

    def prepare_data(self) -> None:
        if self.hparams.download:
            download_omniglot(self.hparams.root, self.hparams.sets)

    def setup(self, stage: str | None = None) -> None:
        if self.val_images is not None:
            return
        hp = self.hparams
        images = read_omniglot(hp.root, hp.sets, image_size=hp.image_size)
        present = set(images.alphabet)
        val = set(hp.val_alphabets or ())
        train = set(hp.train_alphabets) if hp.train_alphabets is not None else present - val
        for name, wanted in (("val_alphabets", val), ("train_alphabets", train)):
            if wanted - present:
                raise CbirError(
                    f"{name}: {sorted(wanted - present)} not in {list(hp.sets)} under {hp.root}; "
                    f"available: {sorted(present)}"
                )
        if train & val and not _disjoint(hp.train_drawers, hp.val_drawers):
            raise CbirError(
                f"alphabets {sorted(train & val)} are in both train_alphabets and val_alphabets: hold them "
                "out, or validate on other drawers of the training characters (disjoint train_drawers and "
                "val_drawers)"
            )
        self.train_images = _select(images, train, hp.train_drawers)
        self.val_images = _select(images, val, hp.val_drawers) if val else None
        if self.val_images is not None and len(self.val_images.images):
            v = self.val_images
            self.episodes = make_episodes(
                v.alphabet, v.labels, v.drawer, hp.ways, hp.shots, hp.trials, hp.episode_seed
            )

    @property
    def num_classes(self) -> int | None:
        """Training classes (characters, times 4 with ``rotation_classes``, times 2 with
        ``reflection_classes``); the class batches' labels are ``0..num_classes-1``. None before setup."""
        if self.train_images is None:
            return None
        factor = (4 if self.hparams.rotation_classes else 1) * (2 if self.hparams.reflection_classes else 1)
        return len(set(self.train_images.character)) * factor

    def training_classes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training images, class ids and alphabet groups (an alphabet in one orientation: a rotated or
        mirrored copy of an alphabet is its own group), rotations and mirror images added as new classes."""
        hp = self.hparams
        if self.train_images is None or not len(self.train_images.images):
            raise CbirError("no training images: check train_alphabets and train_drawers")
        images, labels = self.train_images.images, self.train_images.labels
        names = sorted(set(self.train_images.alphabet))
        groups = torch.tensor([names.index(a) for a in self.train_images.alphabet])
        if hp.rotation_classes:
            images = torch.cat([torch.rot90(images, r, (2, 3)) for r in range(4)])
            labels, groups = _new_ids(labels, 4), _new_ids(groups, 4)
        if hp.reflection_classes:
            images = torch.cat([images, images.flip(3)])
            labels, groups = _new_ids(labels, 2), _new_ids(groups, 2)
        return images, labels, groups

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        images, labels, groups = self.training_classes()
        augment = AffineRanges() if hp.augment else None
        data, batch_size = training_samples(
            images,
            labels,
            hp.sampling,
            hp.epoch_length,
            hp.seed,
            augment,
            hp.batch_size,
            hp.classes_per_batch,
            hp.samples_per_class,
            groups=groups,
            groups_per_batch=hp.alphabets_per_batch,
        )
        return self._loader(data, EpochSampler(len(data)), batch_size)

    def val_dataloader(self) -> DataLoader:
        if self.val_images is None:
            raise CbirError("validation needs val_alphabets: set data.init_args.val_alphabets in the config")
        data = IndexedImages(self.val_images.images, self.val_images.labels)
        return self._loader(data, None, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        """Any image as the evaluation loader gives it: grayscale, ink bright (Omniglot's PNGs are black on
        white), ``image_size`` square with area averaging, float in [0, 1], ``[1, S, S]``."""
        gray = torch.from_numpy(np.invert(np.asarray(image.convert("L"))))[None, None]
        return resize_uint8(gray, self.hparams.image_size)[0].float().div(255)

    def preprocess_spec(self) -> dict:
        """``eval_transform`` as data: grayscale, inverted, area-resized, unnormalised."""
        size = int(self.hparams.image_size)
        return {"mode": "L", "invert": True, "resize": "area", "size": size, "mean": None, "std": None}

    def display_image(self, image: torch.Tensor) -> torch.Tensor:
        """An evaluation tensor (ink bright) -> uint8 RGB ``[3, S, S]``, ink dark on white as drawn."""
        return display_pixels(1 - image)

    def whitening_data(self) -> tuple[Dataset, torch.Tensor]:
        """Training images (evaluation transform) and every pair of drawings of the same character."""
        if self.train_images is None:
            self.setup("fit")
        labels = self.train_images.labels
        same = labels[:, None] == labels[None, :]
        pairs = torch.triu(same, diagonal=1).nonzero()
        return IndexedImages(self.train_images.images, labels), pairs

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _loader(self, data: Dataset, sampler, batch_size: int | None) -> DataLoader:
        return loader(data, sampler, batch_size, self.hparams.num_workers)


def _new_ids(ids: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` copies of ``ids`` side by side, copy ``r`` shifted by ``r * (max + 1)``: each copy of the
    images (a rotation, a mirror image) gets ids of its own."""
    step = int(ids.max()) + 1
    return torch.cat([ids + r * step for r in range(copies)])


def _disjoint(train_drawers: Sequence[int] | None, val_drawers: Sequence[int] | None) -> bool:
    """Whether both drawer lists are given and share no drawer."""
    return train_drawers is not None and val_drawers is not None and not set(train_drawers) & set(val_drawers)


def _select(images: OmniglotImages, alphabets: set[str], drawers: Sequence[int] | None) -> OmniglotImages:
    keep = torch.tensor([a in alphabets for a in images.alphabet], dtype=torch.bool)
    if drawers is not None:
        keep &= torch.isin(images.drawer, torch.tensor(list(drawers)))
    return images.subset(keep)
