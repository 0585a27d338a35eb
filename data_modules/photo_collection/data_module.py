"""``PhotoCollectionDataModule``: a user's labelled photos (class folders or a CSV/TSV), streamed from disk.

Nothing is held in memory but paths: DataLoader workers decode each photo when it is needed, so the
collection may be far larger than RAM. Training draws class batches from the training classes
(:class:`~data_modules.datasets.streamed_batches.StreamedClassBatches`); evaluation scores every photo of the
held-out classes against all the others (relevant = same label), the metric-learning protocol for
classes never seen in training (:mod:`data_modules.photo_collection.files` for the split).

Photos are seen square: for evaluation the shorter side is resized to ``image_size`` and the centre
cropped (``resize: crop``), or the whole photo (its box where it has one) is resized to the square
(``resize: squash``, nothing cut off); for training a random resized crop and a flip. Tensors are
normalised with ``mean``/``std`` (ImageNet's by default, what pretrained backbones expect).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cbir_lightning.errors import CbirError
from data_modules.base import RetrievalDataModule
from data_modules.datasets.cached_features import CachedClassBatches, CachedItems
from data_modules.datasets.photo_files import LabelledPhotos
from data_modules.datasets.photo_views import PhotoViews
from data_modules.datasets.streamed_batches import StreamedClassBatches
from data_modules.photo_collection.files import (
    Collection,
    read_class_folders,
    read_stanford_dogs,
    read_table,
    split_collection,
)
from data_modules.sampling.pairs import check_class_count, check_sampling
from data_modules.sampling.retrieval_split import balanced_pairs
from data_modules.sampling.samplers import EpochSampler, loader
from data_modules.transforms.normalize import IMAGENET_MEAN, IMAGENET_STD
from data_modules.transforms.photos import PhotoTransform


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """Shorter side resized to ``size`` (bilinear), the central ``size`` x ``size`` square cropped."""
    width, height = image.size
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)
    return image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)


def squashed(image: Image.Image, size: int) -> Image.Image:
    """The whole image resized to ``size`` x ``size`` (bilinear; the aspect ratio is not kept)."""
    return image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


RESIZES = {"crop": (centre_square, "centre_square"), "squash": (squashed, "bilinear")}


class SquareView:
    """PIL image -> square (``resize``: ``crop`` the centre square, or ``squash`` the whole image) ->
    normalised tensor (picklable for DataLoader workers)."""

    def __init__(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], resize: str = "crop"
    ) -> None:
        if resize not in RESIZES:
            raise CbirError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
        self.image_size, self.resize = int(image_size), resize
        self.to_tensor = PhotoTransform(image_size, keep_aspect=False, mean=mean, std=std)

    def view(self, image: Image.Image) -> Image.Image:
        return RESIZES[self.resize][0](image, self.image_size)

    def preprocess_spec(self) -> dict:
        """``__call__`` as a preprocessing spec (``cbir_lightning.export.preprocess``)."""
        return self.to_tensor.preprocess_spec(RESIZES[self.resize][1])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.view(image))


class PhotoCollectionDataModule(RetrievalDataModule):
    """Args:
    root: the collection: class folders ``<root>/<label>/<image>``, or the folder that ``labels_file``'s
        paths are relative to, or the Stanford Dogs release (``layout: stanford_dogs``).
    labels_file: a ``.csv``/``.tsv`` with a header (relative to ``root`` or absolute); null: class folders.
    layout: ``auto`` (a table if ``labels_file`` is set, else class folders) or ``stanford_dogs`` (the
        release's lists and box annotations; ``crop`` crops each photo to its dog).
    crop: crop to the annotated box where the layout has boxes.
    path_column / label_column / group_column / split_column: the table's columns. Relevance is the
        label; the class-disjoint split holds out whole groups (labels when no group column); a split
        column (``train``/``val``/``test``) gives the split instead.
    held_out_classes: evaluation classes (groups): a count, a fraction in (0, 1), or a list of names.
    split_seed: which classes are held out; null: the last ones in sorted order.
    image_size: side of the square photos.
    resize: how a photo (or its box) becomes the evaluation square: ``crop``, the shorter side to
        ``image_size`` and the centre square; ``squash``, the whole photo resized to the square (aspect not
        kept, nothing cut off: better where a box frames the object, as the Stanford Dogs boxes).
    classes_per_batch / samples_per_class / epoch_length / augment: training class batches.
    mean / std: normalisation (ImageNet's by default).
    whitening_pairs: same-class training pairs offered for learned whitening.
    eval_batch_size / num_workers / seed: loaders and the training samples' seed.
    """

    def __init__(
        self,
        root: str | Path = "data/photos",
        labels_file: str | None = None,
        layout: str = "auto",
        crop: bool = True,
        path_column: str = "path",
        label_column: str = "label",
        group_column: str | None = None,
        split_column: str | None = None,
        held_out_classes: float | list[str] = 0.25,
        split_seed: int | None = 0,
        image_size: int = 224,
        resize: str = "crop",
        classes_per_batch: int = 16,
        samples_per_class: int = 2,
        epoch_length: int = 100,
        augment: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        whitening_pairs: int = 5000,
        eval_batch_size: int = 64,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if layout not in ("auto", "stanford_dogs"):
            raise CbirError(f"layout must be 'auto' or 'stanford_dogs', got {layout!r}")
        if image_size < 1:
            raise CbirError(f"image_size must be a positive number of pixels, got {image_size}")
        check_sampling("class_batches", classes_per_batch, samples_per_class)
        if (len(mean), len(std)) != (3, 3):
            raise CbirError("mean and std must be 3 numbers each (R, G, B)")
        self.view = SquareView(image_size, mean, std, resize)
        self.mean, self.std = mean, std
        self.collection: Collection | None = None
        self.is_eval: torch.Tensor | None = None
        self.class_names: list[str] = []
        self.labels: torch.Tensor | None = None
        self.retrieval_split = None  # every evaluation photo against all the others

    def _read(self) -> Collection:
        hp = self.hparams
        root = Path(hp.root)
        if not root.is_dir():
            raise CbirError(
                f"photo collection {root} not found; set data.init_args.root to a folder of class folders "
                "(<root>/<label>/<image>.jpg) or of the photos a labels_file lists"
            )
        if hp.layout == "stanford_dogs":
            return read_stanford_dogs(root)
        if hp.labels_file is None:
            return read_class_folders(root)
        table = Path(hp.labels_file)
        return read_table(
            root,
            table if table.is_absolute() else root / table,
            hp.path_column,
            hp.label_column,
            hp.group_column,
            hp.split_column,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.collection is not None:
            return
        hp = self.hparams
        collection = self._read()
        self.class_names = sorted(set(collection.labels))
        index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = torch.tensor([index[name] for name in collection.labels])
        self.is_eval = torch.from_numpy(split_collection(collection, hp.held_out_classes, hp.split_seed))
        if int(torch.bincount(self.labels[self.is_eval]).max()) < 2:  # no query would have a relevant item
            raise CbirError(
                f"{hp.root}: every held-out class has a single photo, so no query can find a relevant one; "
                "hold out classes with two or more photos"
            )
        self.collection = collection

    def _subset(self, evaluation: bool) -> tuple[list[Path], torch.Tensor, list | None]:
        """Paths, labels and crop boxes (None: whole photos) of the training or evaluation photos."""
        self.setup()
        keep = torch.nonzero(self.is_eval == evaluation).flatten().tolist()
        boxes = self.collection.boxes if self.hparams.crop else None
        return (
            [self.collection.paths[i] for i in keep],
            self.labels[keep],
            [boxes[i] for i in keep] if boxes is not None else None,
        )

    def view_source(self, split: str) -> PhotoViews:
        """The ``"train"`` or ``"eval"`` photos as a feature cache's items (``FeatureData``)."""
        paths, labels, boxes = self._subset(split == "eval")
        hp = self.hparams
        recipe = {
            "photos": RESIZES[hp.resize][1],
            "size": hp.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        return PhotoViews(paths, labels, boxes, hp.image_size, self.view, self.view.to_tensor, recipe)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        paths, labels, boxes = self._subset(False)
        check_class_count(labels, hp.classes_per_batch)
        cached = self.cached("train")
        if cached is not None:
            data = CachedClassBatches(
                cached, labels, hp.epoch_length, hp.seed, hp.classes_per_batch, hp.samples_per_class
            )
            return self._loader(data, EpochSampler(len(data)), None)
        data = StreamedClassBatches(
            paths,
            labels,
            hp.epoch_length,
            hp.seed,
            hp.image_size,
            self.view.to_tensor,
            self.view.view,
            hp.classes_per_batch,
            hp.samples_per_class,
            hp.augment,
            boxes,
        )
        return self._loader(data, EpochSampler(len(data)), None)

    def val_dataloader(self) -> DataLoader:
        cached = self.cached("eval")
        if cached is not None:
            data = CachedItems(cached, self.view_source("eval"))
            return self._loader(data, None, self.hparams.eval_batch_size)
        paths, labels, boxes = self._subset(True)
        photos = LabelledPhotos(paths, labels, self.view, boxes)
        return self._loader(photos, None, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        """Any photo as the evaluation loader gives it: its ``image_size`` square (``resize``), normalised."""
        return self.view(image)

    def preprocess_spec(self) -> dict:
        """``eval_transform`` as data: the ``image_size`` square (``resize``), normalised."""
        return self.view.preprocess_spec()

    def whitening_data(self) -> tuple[Dataset, torch.Tensor]:
        """Training photos (evaluation view) and up to ``whitening_pairs`` same-class pairs."""
        paths, labels, boxes = self._subset(False)
        pairs = balanced_pairs(labels, self.hparams.whitening_pairs, self.hparams.seed)
        return LabelledPhotos(paths, labels, self.view, boxes), pairs

    def _loader(self, data: Dataset, sampler, batch_size: int | None) -> DataLoader:
        workers = self.hparams.num_workers
        return loader(data, sampler, batch_size, workers, persistent_workers=workers > 0)
