"""Training samples for Siamese nets, drawn on the fly from labelled images.

``PairDataset``: one balanced (x1, x2, same) pair per item, Koch's setting.
``ClassBatchDataset``: one whole batch per item, ``classes_per_batch`` classes x ``samples_per_class``
images, so a loss can use every pair inside the batch (B^2 pairs per B forward passes).
Both decode a key from :class:`~data_modules.sampling.samplers.EpochSampler` and apply Koch's distortions.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cbir_lightning.contracts import ClassBatch, PairBatch
from cbir_lightning.errors import CbirError
from data_modules.sampling.samplers import item_generator, pick_members
from data_modules.transforms.augment import AffineRanges, koch_distort


class _LabelledImages(Dataset):
    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, length: int, seed: int, augment: AffineRanges | None
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be uint8 [n, c, h, w]")
        self.images, self.labels = images, labels
        self.length, self.seed, self.augment = int(length), int(seed), augment
        classes, self.inverse = torch.unique(labels, return_inverse=True)
        self.num_classes = len(classes)
        order = torch.argsort(self.inverse, stable=True)
        counts = torch.bincount(self.inverse, minlength=self.num_classes)
        self.members = list(torch.split(order, counts.tolist()))
        if int(counts.min()) < 2:
            raise ValueError("every class needs at least two images to form positive pairs")

    def __len__(self) -> int:
        return self.length

    def _decode(self, key: int) -> tuple[int, torch.Generator]:
        return key % self.length, item_generator(self.seed, key)

    def _pick(self, cls: int, count: int, gen: torch.Generator) -> torch.Tensor:
        return pick_members(self.members[cls], count, gen)

    def _load(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = self.images[index].float().div_(255)
        return koch_distort(batch, gen, self.augment) if self.augment is not None else batch


class PairDataset(_LabelledImages):
    """Item ``i`` is a positive pair when ``i`` is even, a negative one when odd: exactly balanced."""

    def __getitem__(self, key: int) -> PairBatch:
        i, gen = self._decode(key)
        cls = int(torch.randint(self.num_classes, (1,), generator=gen))
        same = i % 2 == 0
        if same:
            index = self._pick(cls, 2, gen)
        else:
            other = (
                cls + 1 + int(torch.randint(self.num_classes - 1, (1,), generator=gen))
            ) % self.num_classes
            index = torch.cat([self._pick(cls, 1, gen), self._pick(other, 1, gen)])
        x = self._load(index, gen)
        return PairBatch(x[0], x[1], torch.tensor(float(same)))


class ClassBatchDataset(_LabelledImages):
    """Item = ``(images [P*K, c, h, w], labels [P*K])``; use with ``DataLoader(batch_size=None)``.

    ``groups`` (one group id per image, the same for every image of a class, e.g. an alphabet) with
    ``groups_per_batch``: each batch draws its classes from that many random groups (more when they hold
    fewer than ``classes_per_batch`` classes), so its negatives share a group; ``None``: classes uniformly.
    """

    def __init__(
        self,
        *args,
        classes_per_batch: int = 32,
        samples_per_class: int = 4,
        groups: torch.Tensor | None = None,
        groups_per_batch: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if classes_per_batch > self.num_classes:
            raise ValueError(f"classes_per_batch={classes_per_batch} > {self.num_classes} classes available")
        self.classes_per_batch, self.samples_per_class = classes_per_batch, samples_per_class
        self.groups_per_batch = groups_per_batch
        self.group_classes: list[torch.Tensor] = []
        if groups_per_batch is not None:
            if groups is None or len(groups) != len(self.labels):
                raise ValueError("groups_per_batch needs one group id per image (groups)")
            class_group = groups[torch.stack([m[0] for m in self.members])]
            if not torch.equal(class_group[self.inverse], groups):
                raise ValueError("every image of a class must be in the class's group")
            self.group_classes = [(class_group == g).nonzero()[:, 0] for g in torch.unique(class_group)]

    def _classes(self, gen: torch.Generator) -> torch.Tensor:
        if self.groups_per_batch is None:
            return torch.randperm(self.num_classes, generator=gen)[: self.classes_per_batch]
        chosen, count = [], 0
        for g in torch.randperm(len(self.group_classes), generator=gen).tolist():
            if len(chosen) >= self.groups_per_batch and count >= self.classes_per_batch:
                break
            chosen.append(self.group_classes[g])
            count += len(self.group_classes[g])
        pool = torch.cat(chosen)
        return pool[torch.randperm(len(pool), generator=gen)[: self.classes_per_batch]]

    def __getitem__(self, key: int) -> ClassBatch:
        _, gen = self._decode(key)
        classes = self._classes(gen)
        index = torch.cat([self._pick(int(c), self.samples_per_class, gen) for c in classes])
        return ClassBatch(self._load(index, gen), self.inverse[index])


def check_sampling(sampling: str, classes_per_batch: int, samples_per_class: int) -> None:
    """CbirError naming the key and the fix unless ``sampling`` is known and, for class batches, every
    batch can hold positive pairs (``samples_per_class`` >= 2) and negative pairs (``classes_per_batch``
    >= 2). Whether there are that many classes is checked when the training set is built."""
    if sampling not in ("pairs", "class_batches"):
        raise CbirError(f"sampling must be 'pairs' or 'class_batches', got {sampling!r}")
    if sampling != "class_batches":
        return
    if samples_per_class < 2:
        raise CbirError(
            f"data.init_args.samples_per_class is {samples_per_class}: class batches need at least 2 images "
            "of each class to form positive pairs; set samples_per_class: 2 or more"
        )
    if classes_per_batch < 2:
        raise CbirError(
            f"data.init_args.classes_per_batch is {classes_per_batch}: class batches need at least 2 classes "
            "to form negative pairs; set classes_per_batch: 2 or more"
        )


def check_class_count(labels: torch.Tensor, classes_per_batch: int) -> None:
    available = len(torch.unique(labels))
    if classes_per_batch > available:
        raise CbirError(
            f"data.init_args.classes_per_batch is {classes_per_batch}, but the training set has {available} "
            f"classes; set classes_per_batch: {available} or less"
        )


def training_samples(
    images: torch.Tensor,
    labels: torch.Tensor,
    sampling: str,
    epoch_length: int,
    seed: int,
    augment: AffineRanges | None,
    batch_size: int,
    classes_per_batch: int,
    samples_per_class: int,
    groups: torch.Tensor | None = None,
    groups_per_batch: int | None = None,
) -> tuple[Dataset, int | None]:
    """The training dataset of a labelled image set and the loader batch size it needs: ``"pairs"``
    gives ``epoch_length`` batches of ``batch_size`` pairs, ``"class_batches"`` ``epoch_length`` whole
    batches (loader batch size ``None``), their classes drawn from ``groups_per_batch`` of the images'
    ``groups`` when given (see ``ClassBatchDataset``)."""
    check_sampling(sampling, classes_per_batch, samples_per_class)
    if sampling == "pairs":
        return PairDataset(images, labels, epoch_length * batch_size, seed, augment), batch_size
    check_class_count(labels, classes_per_batch)
    data = ClassBatchDataset(
        images,
        labels,
        epoch_length,
        seed,
        augment,
        classes_per_batch=classes_per_batch,
        samples_per_class=samples_per_class,
        groups=groups,
        groups_per_batch=groups_per_batch,
    )
    return data, None
