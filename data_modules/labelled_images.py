"""``LabelledImagesDataModule``: the shell shared by DataModules whose images fit in memory as uint8
tensors with class labels (CIFAR-10, Stanford Dogs).

A subclass's ``setup`` fills ``self.train = (images, labels)``, ``self.eval_items`` (an
:class:`~data_modules.datasets.indexed_images.IndexedImages`) and ``self.retrieval_split`` (True for
queries, or ``None``: every item against all others); this class gives the training samples (class
batches or pairs, :func:`~data_modules.sampling.pairs.training_samples`), the evaluation loaders,
``eval_transform`` and ``whitening_data``. Hyperparameters used here: ``image_size``, ``sampling``,
``batch_size``, ``classes_per_batch``, ``samples_per_class``, ``epoch_length``, ``augment``, ``mean``,
``std``, ``whitening_pairs``, ``eval_batch_size``, ``num_workers``, ``seed``, ``root``.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cbir_lightning.errors import CbirError
from data_modules.base import RetrievalDataModule
from data_modules.datasets.array_views import ArrayViews
from data_modules.datasets.cached_features import CachedClassBatches, CachedItems
from data_modules.datasets.image_folders import to_uint8
from data_modules.datasets.indexed_images import IndexedImages
from data_modules.sampling.pairs import training_samples
from data_modules.sampling.retrieval_split import balanced_pairs
from data_modules.sampling.samplers import EpochSampler, loader
from data_modules.transforms.augment import AffineRanges
from data_modules.transforms.normalize import NormalizedItems, normalize


class LabelledImagesDataModule(RetrievalDataModule):
    name = "images"  # used in error messages
    mode = "RGB"  # PIL mode of the images

    def __init__(self) -> None:
        super().__init__()
        self.train: tuple[torch.Tensor, torch.Tensor] | None = None
        self.eval_items: IndexedImages | None = None
        self.retrieval_split: torch.Tensor | None = None

    @property
    def resize(self) -> str:
        """How images are resized to ``image_size``: ``area``, or the subclass's ``resize`` argument."""
        return self.hparams.get("resize", "area")

    def view_source(self, split: str) -> ArrayViews:
        """The ``"train"`` images or the ``"eval"`` items as a feature cache's items (``FeatureData``)."""
        hp = self.hparams
        self.setup("fit" if split == "train" else "validate")
        images, labels = self.train if split == "train" else (self.eval_items.images, self.eval_items.labels)
        recipe = {"images": self.mode, "size": hp.image_size, "resize": self.resize}
        return ArrayViews(images, labels, hp.mean, hp.std, recipe)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        self.setup("fit")
        images, labels = self.train
        cached = self.cached("train")
        if cached is not None:
            data = CachedClassBatches(
                cached, labels, hp.epoch_length, hp.seed, hp.classes_per_batch, hp.samples_per_class
            )
            return self._loader(data, EpochSampler(len(data)), None, normalize=False)
        try:
            data, batch_size = training_samples(
                images,
                labels,
                hp.sampling,
                hp.epoch_length,
                hp.seed,
                AffineRanges() if hp.augment else None,
                hp.batch_size,
                hp.classes_per_batch,
                hp.samples_per_class,
            )
        except ValueError as err:
            raise CbirError(f"{self.name} training set under {hp.root}: {err}") from err
        return self._loader(data, EpochSampler(len(data)), batch_size)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        cached = self.cached("eval")
        if cached is not None:
            data = CachedItems(cached, self.view_source("eval"))
            return self._loader(data, None, self.hparams.eval_batch_size, normalize=False)
        return self._loader(self.eval_items, None, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        """Any image as the evaluation loader gives it: ``mode`` (RGB or grayscale), ``image_size`` square
        (``resize``), float in [0, 1], normalised with ``mean``/``std`` when they are set."""
        hp = self.hparams
        x = to_uint8(image.convert(self.mode), hp.image_size, self.resize).float().div(255)
        return normalize(x, hp.mean, hp.std) if hp.mean is not None else x

    def preprocess_spec(self) -> dict:
        """``eval_transform`` as data: ``mode``, ``resize`` to ``image_size``, ``mean``/``std`` if set."""
        hp = self.hparams
        normalised = hp.mean is not None
        return {
            "mode": self.mode,
            "invert": False,
            "resize": self.resize,
            "size": int(hp.image_size),
            "mean": [float(v) for v in hp.mean] if normalised else None,
            "std": [float(v) for v in hp.std] if normalised else None,
        }

    def whitening_data(self) -> tuple[Dataset, torch.Tensor]:
        """Training images (evaluation transform) and up to ``whitening_pairs`` same-class pairs."""
        self.setup("fit")
        images, labels = self.train
        pairs = balanced_pairs(labels, self.hparams.whitening_pairs, self.hparams.seed)
        return NormalizedItems(IndexedImages(images, labels), self.hparams.mean, self.hparams.std), pairs

    def _loader(self, data: Dataset, sampler, batch_size: int | None, normalize: bool = True) -> DataLoader:
        data = NormalizedItems(data, self.hparams.mean, self.hparams.std) if normalize else data
        return loader(data, sampler, batch_size, self.hparams.num_workers)
