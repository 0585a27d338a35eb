"""Epoch-aware sampling that is reproducible under a seed for any ``num_workers`` and under DDP.

``EpochSampler`` yields integer keys ``epoch * num_items + i``; datasets turn a key into the work of item
``i`` in that epoch with :func:`item_generator`, a ``torch.Generator`` seeded from ``(seed, epoch, i)``.
Nothing depends on which worker or rank draws the item, so the same seed gives the same samples.
It subclasses ``DistributedSampler`` so Lightning keeps it (and calls ``set_epoch``) instead of wrapping it:
each rank gets a disjoint shard of the epoch's items.

``EpochLoader`` is the training ``DataLoader`` of such a sampler: it reads its sampler only at the first
batch (after Lightning has set the epoch, also for a resumed or reloaded loader) and Lightning checkpoints
its position, so a resumed ``fit`` draws exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def item_generator(seed: int, key: int) -> torch.Generator:
    """A generator whose state is a pure function of ``(seed, key)``."""
    state = np.random.SeedSequence([int(seed), int(key)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def pick_members(members: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` of ``members``: distinct when there are enough, else drawn with replacement."""
    if count <= len(members):
        return members[torch.randperm(len(members), generator=gen)[:count]]
    return members[torch.randint(len(members), (count,), generator=gen)]


def class_batch(
    members: list[torch.Tensor], classes_per_batch: int, samples_per_class: int, gen: torch.Generator
) -> torch.Tensor:
    """Item indices of one class batch: ``classes_per_batch`` classes drawn from ``members`` (the items of
    each class), ``samples_per_class`` items of each (:func:`pick_members`)."""
    chosen = torch.randperm(len(members), generator=gen)[:classes_per_batch]
    return torch.cat([pick_members(members[int(c)], samples_per_class, gen) for c in chosen])


def replicas_and_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """The given ``(num_replicas, rank)``, each None replaced by the process group's (1 and 0 without one)."""
    grouped = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if grouped else 1
    if rank is None:
        rank = dist.get_rank() if grouped else 0
    return num_replicas, rank


class EpochSampler(DistributedSampler):
    """Yields ``epoch * num_items + i`` for this rank's share of ``i in range(num_items)``."""

    def __init__(self, num_items: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        num_replicas, rank = replicas_and_rank(num_replicas, rank)
        super().__init__(
            range(num_items), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True
        )
        self.num_items = num_items
        self.start = 0  # items of this rank's share to skip in the next iteration (a mid-epoch resume)

    def resume_at(self, position: int) -> None:
        """The next iteration begins ``position`` items into this rank's share of the epoch."""
        self.start = int(position)

    def __iter__(self) -> Iterator[int]:
        offset, first = self.epoch * self.num_items, self.rank + self.start * self.num_replicas
        self.start = 0
        for i in range(first, self.num_samples * self.num_replicas, self.num_replicas):
            yield offset + i


class EpochLoader(DataLoader):
    """A training ``DataLoader`` over an epoch-keyed sampler (one with ``set_epoch``, ``epoch`` and
    ``resume_at``: :class:`EpochSampler`, ``TupleSampler``) that resumes exactly.

    Guarantees: (1) the sampler is read, and the workers started, only when the first batch is asked for,
    so the batches are those of the epoch Lightning set (Lightning creates a loader's first iterator
    before it sets the epoch, and with workers the keys were drawn at once: a resumed or reloaded loader
    gave epoch 0's batches again); (2) ``state_dict()`` (Lightning's resumable-loader interface, saved in
    every checkpoint) is the epoch and the batches handed out in it, and ``load_state_dict()`` continues
    there: the next epoch after a finished one, the rest of the epoch after a mid-epoch checkpoint; (3) the
    workers' base seed is a function of ``(torch.initial_seed(), epoch)`` (``seed_everything``'s seed), not a
    draw from torch's global generator, so starting a loader (as a resumed run does mid-epoch) leaves
    that generator as the uninterrupted run has it.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.handed_out = 0  # batches of the current epoch given to the trainer
        self.skipped = 0  # batches the next iteration skips (trained on before a mid-epoch checkpoint)
        self.seed = torch.initial_seed()

    def __iter__(self) -> Iterator:
        return self._batches()

    def _batches(self) -> Iterator:
        self.handed_out, self.skipped = self.skipped, 0
        self.generator = item_generator(self.seed, self.sampler.epoch)
        for batch in super().__iter__():  # runs at the first next(): the epoch is set by then
            self.handed_out += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": int(self.sampler.epoch), "batches": self.handed_out}

    def load_state_dict(self, state: dict) -> None:
        """Position the sampler where ``state`` left off (its batches already trained on are skipped)."""
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.resume_at(batches * (self.batch_size or 1))
        self.skipped = batches


def loader(data: Dataset, sampler, batch_size: int | None, num_workers: int, **options) -> DataLoader:
    """The one way a DataModule makes a loader: an :class:`EpochLoader` (resumable, exact) over an epoch-keyed
    training ``sampler``, else a plain ``DataLoader`` in order (``sampler`` None); ``options`` go to the
    loader (``collate_fn``, ``drop_last``, ``persistent_workers``)."""
    kind = DataLoader if sampler is None else EpochLoader
    return kind(
        data, batch_size=batch_size, sampler=sampler, num_workers=num_workers, shuffle=False, **options
    )
