"""Epoch-aware sampling that is reproducible under a seed for any ``num_workers`` and under DDP.

``EpochSampler`` yields integer keys ``epoch * num_items + i``; datasets turn a key into the work of item
``i`` in that epoch with :func:`item_generator`, a ``torch.Generator`` seeded from ``(seed, epoch, i)``.
Nothing depends on which worker or rank draws the item, so the same seed gives the same samples.
It subclasses ``DistributedSampler`` so Lightning keeps it (and calls ``set_epoch``) instead of wrapping it:
each rank gets a disjoint shard of the epoch's items.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


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

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.num_items
        for i in range(self.rank, self.num_samples * self.num_replicas, self.num_replicas):
            yield offset + i
