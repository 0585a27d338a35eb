"""Exact k-NN in torch: chunked float32 matmul + top-k for candidates, then the canonical exact top-k."""

from __future__ import annotations

import threading
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from cbir_lightning.metrics.threads import parallel_map
from cbir_lightning.retrieval.exact import exact_topk, rounding_bound

METRICS = ("cosine", "dot", "l2")


def prepare(vectors, metric: str) -> Tensor:
    """float32 contiguous vectors; unit-normalised for ``cosine``."""
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {METRICS}.")
    x = torch.as_tensor(vectors).detach().cpu().float()
    if x.ndim != 2:
        raise ValueError(f"Expected a [n, d] array, got shape {tuple(x.shape)}.")
    return (F.normalize(x, dim=1) if metric == "cosine" else x).contiguous()


class TorchKnn:
    """Exact k-NN over a fixed database with torch.

    Args:
        database: ``[n, d]`` vectors.
        metric: ``cosine``, ``dot`` or ``l2`` (scores are ``-distance``).
        chunk_size: queries scored at once (memory ``O(chunk_size * n)``); default keeps
            ``chunk_size * n`` near 2**23 (16 to 1024 queries).
    """

    exact = True

    def __init__(self, database, metric: str = "cosine", chunk_size: int | None = None) -> None:
        self.metric = metric
        self.database = prepare(database, metric)
        self.sq_norms = (self.database.double() ** 2).sum(1)
        self.max_norm = float(self.sq_norms.max().sqrt()) if len(self.database) else 0.0
        self.chunk_size = chunk_size or max(16, min(1024, (1 << 23) // max(len(self.database), 1)))

    def search(self, query, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` ``(scores float64 [nq, k], indices int64 [nq, k])``, ties: lower index first."""
        query = prepare(query, self.metric)
        k = min(k, len(self.database))
        starts = range(0, len(query), self.chunk_size)

        buffers = threading.local()  # one score buffer per worker: no fresh pages for every chunk

        def search(start: int) -> tuple[Tensor, Tensor]:
            rows = query[start : start + self.chunk_size]
            if not hasattr(buffers, "out"):
                buffers.out = torch.empty(min(self.chunk_size, len(query)), len(self.database))
            candidates = partial(self._candidates, out=buffers.out)
            return exact_topk(rows, self.database, k, self.metric, candidates)

        workers = torch.get_num_threads()
        if workers > 1 and len(starts) > 1:  # chunks side by side, one thread each
            parts = parallel_map(search, starts, workers)
        else:
            parts = [search(start) for start in starts]
        scores = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, k, dtype=torch.float64)
        indices = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, k, dtype=torch.int64)
        return (-(-scores).sqrt() if self.metric == "l2" else scores), indices

    def _candidates(
        self, query: Tensor, rows: Tensor, size: int, out: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        approx = torch.matmul(query, self.database.T, out=out[: len(query)])
        if self.metric == "l2":  # rank by 2 q.x - |x|^2 (= |q|^2 - |q - x|^2)
            approx.mul_(2).sub_(self.sq_norms.float()[None])
            shift = (query.double() ** 2).sum(1)
        else:
            shift = torch.zeros(len(query), dtype=torch.float64)
        values, found = grouped_topk(approx, size)
        error = rounding_bound(query.shape[1], query.double().norm(dim=1), self.max_norm, self.metric)
        return found, values.double() - shift[:, None], error


def grouped_topk(scores: Tensor, k: int, group: int = 32) -> tuple[Tensor, Tensor]:
    """``torch.topk(scores, k, dim=1)`` values (the same multiset), faster for small ``k``: the top ``k``
    items lie in the ``k`` groups of ``group`` columns with the largest maxima, so only those groups (and
    the ragged tail) are searched. The ``k``-th value returned bounds every item not returned."""
    c, n = scores.shape
    full = n // group
    if full <= k or not scores.is_contiguous():
        return torch.topk(scores, k, dim=1)
    maxima = scores.as_strided((c, full, group), (n, group, 1)).amax(-1)
    groups = torch.topk(maxima, k, dim=1).indices
    candidates = (groups[:, :, None] * group + torch.arange(group, device=scores.device)).view(c, -1)
    if full * group < n:
        tail = torch.arange(full * group, n, device=scores.device).expand(c, -1)
        candidates = torch.cat([candidates, tail], dim=1)
    values, pick = torch.topk(scores.gather(1, candidates), k, dim=1)
    return values, candidates.gather(1, pick)
