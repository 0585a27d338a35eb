"""Training tuples ``(query, positive, negatives...)`` re-mined every epoch.

:class:`TupleSampler` calls ``mine(epoch)`` when an epoch's iteration starts (in the main process, on
every rank, so the mining may use collectives) and yields this rank's share of the mined tuples as
tuples of image indices; the dataset (:class:`~data_modules.datasets.photo_files.PhotoFiles`) turns each
into a list of image tensors in the worker processes, and :func:`collate_tuples` builds the batch
:class:`~cbir_lightning.contracts.TupleBatch` ``[[q, p, n1, ...], ...]`` (images of one tuple may differ
in size).
It subclasses ``DistributedSampler`` so Lightning keeps it and calls ``set_epoch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DistributedSampler

from cbir_lightning.contracts import TupleBatch
from data_modules.sampling.samplers import replicas_and_rank


def collate_tuples(batch: list[list[torch.Tensor]]) -> TupleBatch:
    return TupleBatch([list(item) for item in batch])


class TupleSampler(DistributedSampler):
    """Yields this rank's share of ``mine(epoch)``'s rows (``[num_tuples, 2 + k]`` image indices)."""

    def __init__(
        self,
        num_tuples: int,
        mine: Callable[[int], torch.Tensor],
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        num_replicas, rank = replicas_and_rank(num_replicas, rank)
        super().__init__(
            range(num_tuples), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True
        )
        self.num_tuples, self.mine = num_tuples, mine
        self.start = 0  # rows of this rank's share to skip in the next iteration (a mid-epoch resume)

    def resume_at(self, position: int) -> None:
        """The next iteration begins ``position`` rows into this rank's share (the epoch is mined again,
        with the model as it is then)."""
        self.start = int(position)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        tuples = self.mine(self.epoch)
        if len(tuples) != self.num_tuples:
            raise RuntimeError(f"mining gave {len(tuples)} tuples, expected {self.num_tuples}")
        first, self.start = self.rank + self.start * self.num_replicas, 0
        rows = tuples[first : self.num_samples * self.num_replicas : self.num_replicas].tolist()
        return iter([tuple(row) for row in rows])
