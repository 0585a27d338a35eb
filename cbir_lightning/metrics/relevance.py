"""Which database items are relevant to each query: from labels, or from per-query index lists.

Both kinds hand the engine, one chunk of queries at a time, the padded index lists it ranks:
``positives [c, P]`` and ``junk [c, J]`` (database indices, ``-1`` as padding). Junk items are taken
out of the query's ranking; an index listed both as positive and as junk is junk; repeated indices
count once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def as_tensor(x) -> Tensor:
    """A tensor from a tensor, numpy array or sequence (no copy where possible)."""
    return x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))


def label_codes(query_labels, database_labels) -> tuple[Tensor, Tensor]:
    """Labels as int64 tensors; labels of any numpy dtype (e.g. strings) are coded consistently."""
    if isinstance(query_labels, Tensor) and isinstance(database_labels, Tensor):
        return query_labels, database_labels
    q, d = np.asarray(query_labels), np.asarray(database_labels)
    if q.dtype.kind in "biu" and d.dtype.kind in "biu":
        return torch.from_numpy(q.astype(np.int64)), torch.from_numpy(d.astype(np.int64))
    if q.ndim != 1 or d.ndim != 1:
        return as_tensor(q), as_tensor(d)  # wrong shapes: the caller reports them
    _, codes = np.unique(np.concatenate([q, d]), return_inverse=True)
    codes = torch.from_numpy(codes.astype(np.int64).reshape(-1))
    return codes[: len(q)], codes[len(q) :]


def _pad(values: Tensor, offsets: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a CSR list (values, offsets) as a ``-1``-padded ``[c, width]`` tensor."""
    first, counts = offsets[start:stop], offsets[start + 1 : stop + 1] - offsets[start:stop]
    width = int(counts.max()) if len(counts) else 0
    column = torch.arange(width)
    index = (first[:, None] + column).clamp(max=max(len(values) - 1, 0))
    if len(values) == 0:
        return torch.full((stop - start, width), -1, dtype=torch.int64)
    return torch.where(column < counts[:, None], values[index], -1)


class LabelRelevance:
    """A database item is a positive of a query iff their labels are equal.

    ``exclude_self``: query ``i`` is database item ``i``; it is junk in its own ranking.
    """

    def __init__(self, query_labels: Tensor, database_labels: Tensor, exclude_self: bool = False) -> None:
        dtype = torch.promote_types(query_labels.dtype, database_labels.dtype)
        query_labels, database_labels = query_labels.cpu().to(dtype), database_labels.cpu().to(dtype)
        self.order = torch.argsort(database_labels, stable=True)
        values, counts = torch.unique_consecutive(database_labels[self.order], return_counts=True)
        starts = counts.cumsum(0) - counts
        group = torch.searchsorted(values, query_labels).clamp(max=max(len(values) - 1, 0))
        found = values[group] == query_labels if len(values) else torch.zeros_like(query_labels, dtype=bool)
        self.start = starts[group] if len(values) else torch.zeros_like(query_labels)
        self.count = torch.where(found, counts[group] if len(values) else 0, 0)
        self.exclude_self = exclude_self

    def chunk(self, start: int, stop: int) -> tuple[Tensor, Tensor | None]:
        counts = self.count[start:stop]
        width = int(counts.max()) if len(counts) else 0
        column = torch.arange(width)
        index = (self.start[start:stop, None] + column).clamp(max=max(len(self.order) - 1, 0))
        positives = torch.where(column < counts[:, None], self.order[index], -1)
        if not self.exclude_self:
            return positives, None
        itself = torch.arange(start, stop)[:, None]
        return torch.where(positives == itself, -1, positives), itself


class ListRelevance:
    """Positives and junk of each query given as lists of database indices.

    Args:
        positives: one sequence of database indices per query.
        junk: one sequence per query (or ``None``): items taken out of that query's ranking.
        num_database: database size, to check the indices.
        exclude_self: query ``i`` is database item ``i``: add it to the query's junk.
    """

    def __init__(
        self,
        positives: Sequence[Sequence[int]],
        junk: Sequence[Sequence[int]] | None,
        num_database: int,
        exclude_self: bool = False,
    ) -> None:
        if junk is not None and len(junk) != len(positives):
            raise ValueError(f"junk has {len(junk)} lists but positives has {len(positives)}.")
        pos_lists, junk_lists = [], []
        for i, listed in enumerate(positives):
            pos = _indices(listed, num_database, f"positives[{i}]")
            bad = _indices(junk[i] if junk is not None else (), num_database, f"junk[{i}]")
            if exclude_self:
                bad = np.union1d(bad, [i])
            pos_lists.append(np.setdiff1d(pos, bad))
            junk_lists.append(bad)
        self.positives, self.positive_offsets = _csr(pos_lists)
        self.junk, self.junk_offsets = _csr(junk_lists)
        self.num_positives = self.positive_offsets[1:] - self.positive_offsets[:-1]

    def chunk(self, start: int, stop: int) -> tuple[Tensor, Tensor | None]:
        junk = _pad(self.junk, self.junk_offsets, start, stop)
        return _pad(self.positives, self.positive_offsets, start, stop), junk if junk.numel() else None


def _indices(listed, num_database: int, name: str) -> np.ndarray:
    values = np.unique(np.asarray(listed, dtype=np.int64).reshape(-1))
    if len(values) and (values[0] < 0 or values[-1] >= num_database):
        raise ValueError(
            f"{name} holds index {values[0] if values[0] < 0 else values[-1]}, outside "
            f"the database [0, {num_database})."
        )
    return values


def _csr(lists: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in lists])
    values = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(values), torch.from_numpy(offsets)
