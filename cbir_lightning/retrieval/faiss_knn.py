"""k-NN with faiss (imported only when used): exact flat search, or approximate IVF / HNSW.

``flat`` (``IndexFlatIP`` / ``IndexFlatL2``) proposes candidates that are re-scored canonically (see
:mod:`cbir_lightning.retrieval.exact`), so its rankings equal the torch backend's.
``ivf`` (``IndexIVFFlat``: ``nlist`` k-means cells, ``nprobe`` visited per query) and ``hnsw``
(``IndexHNSWFlat``: graph with ``hnsw_m`` links, ``ef_search`` beam) are approximate: faster, but some
true neighbours are missed; measure with :func:`~cbir_lightning.retrieval.knn.knn_recall`.
``save`` / ``load`` write and read the faiss index (the image search's ``faiss.index``).
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cbir_lightning.errors import CbirError
from cbir_lightning.metrics.threads import parallel_map
from cbir_lightning.retrieval.exact import canonical_scores, exact_topk, order_candidates, rounding_bound
from cbir_lightning.retrieval.torch_knn import prepare

INDEXES = ("flat", "ivf", "hnsw")
# faiss's flat search uses BLAS once queries x dimension reach faiss.cvar.distance_compute_blas_threshold
# (128000 in faiss-cpu 1.15); below it, a scan ~10x slower (1000 x 128-d on 50k items: 0.06 s; 999: 0.5 s)
BLAS_THRESHOLD = 128_000


def import_faiss():
    try:
        import faiss  # heavy import: only for a faiss backend (torch k-NN never loads it)
    except ImportError as err:
        raise CbirError("the faiss backend needs faiss: pip install faiss-cpu") from err
    return faiss


class FaissKnn:
    """k-NN over a fixed database with faiss.

    Args:
        database: ``[n, d]`` vectors.
        metric: ``cosine``, ``dot`` or ``l2`` (scores are ``-distance``).
        index: ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate), or a faiss index already holding
            ``database`` (as :meth:`load` reads it).
        nlist / nprobe: IVF cells (default ``4 * sqrt(n)``) and cells visited per query.
        hnsw_m / ef_search / ef_construction: HNSW links per node and beam widths.
    """

    def __init__(
        self,
        database,
        metric: str = "cosine",
        index="flat",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 80,
        seed: int = 0,
    ) -> None:
        faiss = import_faiss()
        self.metric, self.database = metric, prepare(database, metric)
        if not isinstance(index, str):
            self.kind, self.index = _kind(faiss, index), index
            self.exact = self.kind == "flat"
            return
        if index not in INDEXES:
            raise ValueError(f"Unknown faiss index {index!r}; expected one of {INDEXES}.")
        self.kind, self.exact = index, index == "flat"
        x = self.database.numpy()
        n, d = x.shape
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if index == "flat":
            self.index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        elif index == "ivf":
            nlist = nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))
            quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
            self.index.cp.seed = seed
            self.index.train(x)
            self.index.nprobe = min(nprobe, nlist)
            self._quantizer = quantizer  # keep it alive
        else:
            self.index = faiss.IndexHNSWFlat(d, hnsw_m, faiss_metric)
            self.index.hnsw.efConstruction = ef_construction
            self.index.hnsw.efSearch = ef_search
        self.index.add(x)

    @classmethod
    def load(cls, path: str | Path, database, metric: str = "dot") -> FaissKnn:
        """The faiss index file ``path`` (written by :meth:`save`) over ``database``, ``[n, d]``."""
        return cls(database, metric, index=import_faiss().read_index(str(path)))

    def save(self, path: str | Path) -> None:
        import_faiss().write_index(self.index, str(path))

    @cached_property
    def max_norm(self) -> float:
        return float(np.linalg.norm(self.database.numpy(), axis=1).max()) if len(self.database) else 0.0

    def search(self, query, k: int, rescore: bool = True) -> tuple[Tensor, Tensor]:
        """Top-``k`` ``(scores float64 [nq, k], indices int64 [nq, k])``; exact for ``flat``.

        ``rescore=False``: faiss's own float32 scores and order, as they are (``flat``: exact but for
        float32 rounding and near-ties; the image search's results, unchanged since its first format).
        """
        query = prepare(query, self.metric)
        k = min(k, len(self.database))
        if not rescore:
            scores, found = self.index.search(query.numpy(), k)
            scores = torch.from_numpy(scores).double()
            return (-scores.clamp(min=0).sqrt() if self.metric == "l2" else scores), torch.from_numpy(found)
        if self.exact:
            scores, indices = self._exact(query, k)
        else:
            _, found = self.index.search(query.numpy(), k)
            found = torch.from_numpy(found).long()
            missing = found < 0  # fewer than k reached: pad with the last item, scored -inf
            scores = canonical_scores(query, self.database[found.clamp(min=0)], self.metric)
            scores = scores.masked_fill(missing, -torch.inf)
            scores, indices = order_candidates(scores, found)
        return (-(-scores).sqrt() if self.metric == "l2" else scores), indices

    def _exact(self, query: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact top-``k`` of ``flat``: blocks of at least :func:`min_queries` queries side by side, faiss
        single-threaded in each worker (no OpenMP barriers stalling on a busy core)."""
        workers = torch.get_num_threads()
        blocks = max(1, min(4 * workers, len(query) // min_queries(query.shape[1])))
        if workers == 1 or blocks == 1:
            return exact_topk(query, self.database, k, self.metric, self._candidates)
        faiss = import_faiss()
        starts = [i * len(query) // blocks for i in range(blocks + 1)]  # even: none below min_queries

        def search(i: int) -> tuple[Tensor, Tensor]:
            faiss.omp_set_num_threads(1)  # this worker thread only: OpenMP settings are per thread
            rows = query[starts[i] : starts[i + 1]]
            return exact_topk(rows, self.database, k, self.metric, self._candidates)

        parts = parallel_map(search, range(blocks), workers)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _candidates(self, query: Tensor, rows: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
        distances, found = self.index.search(query.numpy(), size)
        approx = torch.from_numpy(distances).double()
        approx = -approx if self.metric == "l2" else approx  # faiss L2 gives squared distances
        error = rounding_bound(query.shape[1], query.double().norm(dim=1), self.max_norm, self.metric)
        return torch.from_numpy(found).long(), approx, error


def min_queries(dim: int) -> int:
    """Fewest ``dim``-d queries that faiss's flat search runs through BLAS (fewer: a much slower scan)."""
    return -(-import_faiss().cvar.distance_compute_blas_threshold // max(dim, 1))


def _kind(faiss, index) -> str:
    """``flat``, ``ivf`` or ``hnsw``: the kind of a built faiss index."""
    for kind, cls in (("flat", faiss.IndexFlat), ("ivf", faiss.IndexIVF), ("hnsw", faiss.IndexHNSW)):
        if isinstance(index, cls):
            return kind
    raise ValueError(f"Unsupported faiss index {type(index).__name__}; expected a flat, IVF or HNSW index.")
