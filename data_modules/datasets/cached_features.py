"""Training and evaluation sets over cached trunk features (``cbir_lightning.features.CachedViews``).

* :class:`CachedClassBatches`: ``[key]`` is a :class:`~cbir_lightning.contracts.FeatureBatch` of
  ``classes_per_batch`` classes x ``samples_per_class`` items, each item in one of its stored views (the
  evaluation view or an augmented one), all drawn from a generator seeded by ``(seed, key)``, so a batch is
  the same for any number of workers or ranks and from a cold or a warm cache.
* :class:`CachedItems`: ``[i]`` is a :class:`~cbir_lightning.contracts.FeatureEvalBatch` item (the
  evaluation view's features, label, index); ``image(i)`` is the image itself, for example grids.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cbir_lightning.contracts import FeatureBatch, FeatureEvalBatch, ViewSource
from data_modules.sampling.samplers import class_batch, item_generator


class CachedClassBatches(Dataset):
    """Args:
    cached: the stored views of the training items (``CachedViews``).
    labels: their class indices.
    length: batches per epoch (keys ``epoch * length + i``, see ``EpochSampler``).
    """

    def __init__(
        self,
        cached,
        labels: torch.Tensor,
        length: int,
        seed: int,
        classes_per_batch: int,
        samples_per_class: int,
    ) -> None:
        self.cached, self.labels = cached, labels
        self.length, self.seed = int(length), int(seed)
        self.classes_per_batch, self.samples_per_class = classes_per_batch, samples_per_class
        order = torch.argsort(labels, stable=True)
        self.members = [m for m in torch.split(order, torch.bincount(labels).tolist()) if len(m)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int) -> FeatureBatch:
        gen = item_generator(self.seed, key)
        index = class_batch(self.members, self.classes_per_batch, self.samples_per_class, gen)
        views = torch.randint(self.cached.views + 1, (len(index),), generator=gen)
        features = torch.stack(
            [self.cached.features(int(i), int(k)) for i, k in zip(index, views, strict=True)]
        )
        return FeatureBatch(features, self.labels[index])


class CachedItems(Dataset):
    """Evaluation items from the stored evaluation views of ``source``'s items."""

    def __init__(self, cached, source: ViewSource) -> None:
        self.cached, self.source = cached, source

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, i: int) -> FeatureEvalBatch:
        return FeatureEvalBatch(self.cached.features(i, 0), self.source.labels[i], torch.tensor(i))

    def image(self, i: int) -> torch.Tensor:
        """The evaluation image of item ``i`` (what an image loader would give)."""
        return self.source.view(i, None)
