"""``RetrievalDataModule``: the base of every DataModule here; it implements
:class:`cbir_lightning.contracts.RetrievalData` with the defaults of a data set that lacks a capability.

A subclass provides Lightning's dataloaders and ``eval_transform`` (one PIL image -> the evaluation
tensor, as its validation set does). It overrides ``episodes`` (N-way one-shot episodes of the validation
set), ``retrieval_split`` (bool tensor, True for queries scored against the database only) and
``whitening_data()`` (a dataset of ``(image, label, index)`` items and a pair tensor) where it has them;
otherwise they are None, and consumers read them as plain attributes. A subclass that normalises its
images sets ``mean``/``std`` (so ``display_image`` can undo it) and one that knows its label names sets
``class_names``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch

from cbir_lightning.pixels import display_pixels

if TYPE_CHECKING:
    from PIL import Image
    from torch.utils.data import Dataset

    from data_modules.sampling.episodes import Episodes


class RetrievalDataModule(pl.LightningDataModule, ABC):
    """A LightningDataModule that provides everything :class:`~cbir_lightning.contracts.RetrievalData`
    names; ``episodes``, ``retrieval_split``, ``whitening_data()``, ``mean``/``std`` and ``class_names``
    default to None."""

    episodes: Episodes | None = None
    retrieval_split: torch.Tensor | None = None
    mean: Sequence[float] | None = None  # the per-channel normalisation of the loaders' images, if any
    std: Sequence[float] | None = None
    class_names: Sequence[str] | None = None  # label i is class_names[i]

    @property
    def num_classes(self) -> int | None:
        """Classes of the training batches' labels; None: unknown (the default) or not set up yet."""
        return None

    def display_image(self, image: torch.Tensor) -> torch.Tensor:
        """One evaluation tensor ``[C, H, W]`` -> its original pixels, uint8 RGB ``[3, H, W]``
        (normalisation with ``mean``/``std`` undone)."""
        return display_pixels(image, self.mean, self.std)

    @abstractmethod
    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> the tensor the validation set would give for it."""

    def whitening_data(self) -> tuple[Dataset, torch.Tensor] | None:
        """Images and matching pairs for learning whitening; None: this data set has none."""
        return None

    def preprocess_spec(self) -> dict | None:
        """``eval_transform`` as data (a spec of ``cbir_lightning.export.preprocess``), so a model file or
        an ONNX export embeds without this DataModule; None: it cannot be described (the default)."""
        return None

    # cached features (``cbir_lightning.callbacks.FeatureCache``): a DataModule that can serve them
    # implements ``view_source`` and asks ``cached(split)`` in its loaders (``contracts.FeatureData``)
    features = None  # what gives the cached views (``CachedFeatures``), or None: images

    def serve_features(self, features) -> None:
        """Make the loaders give cached features from ``features`` (None: images)."""
        self.features = features

    def cached(self, split: str):
        """The cached views (``CachedViews``) of the ``"train"`` or ``"eval"`` items, or None: images."""
        return self.features.views(split, self) if self.features is not None else None
