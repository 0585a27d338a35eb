"""An approximate faiss index whose search parameter is tuned for a requested recall@k.

Kind (faiss's guidelines, "Guidelines to choose an index"): fewer than :data:`MIN_SIZE` vectors stay exact
(``flat``: a scan is fast enough and exact); below :data:`HNSW_BELOW` an ``IndexHNSWFlat`` (M =
:data:`HNSW_M`, no training); from there an ``IndexIVFFlat`` with ``nlist = 4 sqrt(n)`` cells (k-means on
at most :data:`IVF_TRAIN_PER_CELL` vectors per cell, seeded).

Tuning: a seeded sample of ``sample`` database rows is held out: the index is built over the other rows
and the sample searched in it, recall@k of a query being ``|A ∩ E| / k`` (``E`` its exact top-k among the
other rows, ``A`` the approximate one). Held out, because a row already in an HNSW graph is linked to its
own neighbours and is found far more easily than a new query (20k clustered 128-d vectors: recall@10
0.97 for rows in the graph, 0.84 for new queries at the same ``ef_search``). An IVF index takes the sample
in afterwards (``add_with_ids``: row ids stay the database's); an HNSW graph, whose ids are its insertion
order, is built again over all rows with the chosen parameter. The search parameter (``ef_search`` for
HNSW, ``nprobe`` for IVF) climbs a fixed ladder and the first value whose mean recall less two standard
errors (over the sample's queries) reaches the target is kept, so new queries reach it too (recall grows
with it; IVF ends at ``nprobe = nlist``, an exhaustive scan, so its target is always met). If no HNSW value
reaches it, the index falls back to exact (``flat``), saying why.

Deterministic for a given database: the sample is drawn from ``torch.Generator().manual_seed(seed)``, the
IVF k-means is seeded, and the ladder is fixed (faiss builds an HNSW graph with several OpenMP threads in a
scheduling-dependent order, so only a single-threaded HNSW build is bit-for-bit repeatable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from cbir_lightning.retrieval.faiss_knn import FaissKnn, import_faiss
from cbir_lightning.retrieval.knn import knn_index
from cbir_lightning.retrieval.torch_knn import prepare

MIN_SIZE = 10_000  # fewer vectors: exact search
HNSW_BELOW = 1_000_000  # fewer vectors: HNSW; more: IVF-Flat
HNSW_M = 32
EF_CONSTRUCTION = 80
IVF_TRAIN_PER_CELL = 64  # k-means training vectors per IVF cell (faiss warns below 39)
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass
class Tuned:
    """An index (``knn``) with its chosen ``params`` and the recall@``k`` measured on the held-out sample."""

    knn: FaissKnn
    kind: str  # flat | hnsw | ivf
    params: dict = field(default_factory=dict)
    recall: float = 1.0
    target: float = 0.95
    k: int = 10
    sample: int = 0
    reason: str = ""
    error: float = 0.0  # standard error of ``recall`` over the sample's queries

    def describe(self) -> dict:
        """The manifest entry: kind, parameters, measured recall, target (and why it is exact, if so)."""
        out = {"kind": self.kind, "params": self.params, f"recall@{self.k}": round(self.recall, 5)}
        out.update({"recall_stderr": round(self.error, 5), "target_recall": self.target})
        out["tuning_queries"] = self.sample
        return {**out, "reason": self.reason} if self.reason else out


def choose_kind(n: int, min_size: int = MIN_SIZE) -> str:
    """``flat`` below ``min_size`` vectors, ``hnsw`` below :data:`HNSW_BELOW`, ``ivf`` from there."""
    return "flat" if n < min_size else "hnsw" if n < HNSW_BELOW else "ivf"


def build_approximate(database, metric: str, kind: str, seed: int = 0, ids=None) -> FaissKnn:
    """An untuned ``hnsw`` or ``ivf`` :class:`FaissKnn` over ``database`` (see the module docstring);
    ``ids`` (IVF only): the row id of each vector (default 0, 1, ...)."""
    faiss = import_faiss()
    x = prepare(database, metric).numpy()
    n, d = x.shape
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss_metric)
        index.hnsw.efConstruction = EF_CONSTRUCTION
    elif kind == "ivf":
        nlist = max(1, min(n // IVF_TRAIN_PER_CELL, int(4 * math.sqrt(n))))
        quantizer = faiss.IndexFlat(d, faiss_metric)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
        quantizer.this.disown()
        index.own_fields = True
        index.cp.seed = seed
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_CELL
        index.train(x)
    else:
        raise ValueError(f"Unknown approximate index {kind!r}; expected hnsw or ivf.")
    if ids is None:
        index.add(x)
    else:
        index.add_with_ids(x, torch.as_tensor(ids).numpy().astype("int64"))
    return FaissKnn(x, metric, index=index)


def set_params(knn: FaissKnn, params: dict) -> None:
    """Apply ``{"ef_search": e}`` (HNSW) or ``{"nprobe": p}`` (IVF) to ``knn``'s faiss index."""
    if "ef_search" in params:
        knn.index.hnsw.efSearch = int(params["ef_search"])
    if "nprobe" in params:
        knn.index.nprobe = int(params["nprobe"])


def ladder(knn: FaissKnn) -> list[dict]:
    """The parameter values tried, cheapest first."""
    if knn.kind == "hnsw":
        return [{"ef_search": e} for e in EF_SEARCH]
    nlist = knn.index.nlist
    return [{"nprobe": p} for p in NPROBE if p < nlist] + [{"nprobe": nlist}]


def recall_with_error(found, exact) -> tuple[float, float]:
    """Mean recall of ``found [s, k]`` against ``exact [s, k]`` over the queries, and its standard error
    (``std / sqrt(s)`` of the per-query recalls)."""
    per_query = (exact[:, :, None] == found[:, None, :]).any(-1).double().mean(1)
    error = per_query.std().item() / len(per_query) ** 0.5 if len(per_query) > 1 else 0.0
    return per_query.mean().item(), error


def tune_approximate(
    database,
    metric: str = "dot",
    target_recall: float = 0.95,
    k: int = 10,
    sample: int = 1000,
    seed: int = 0,
    kind: str | None = None,
    min_size: int = MIN_SIZE,
) -> Tuned:
    """An approximate index over ``database [n, d]`` tuned to reach ``target_recall`` at ``k`` on a held-out
    sample (the module docstring); ``kind`` forces ``hnsw`` / ``ivf`` (default: :func:`choose_kind`)."""
    if not 0 < target_recall <= 1:
        raise ValueError(f"target recall must lie in (0, 1], got {target_recall}")
    x = prepare(database, metric)
    n = len(x)
    kind = kind or choose_kind(n, min_size)
    if kind == "flat":
        reason = f"{n} vectors, fewer than {min_size}: exact search"
        return Tuned(FaissKnn(x, metric), "flat", {}, 1.0, target_recall, k, 0, reason)
    held_count = max(1, min(sample, n // 10))  # at most a tenth of the rows is held out
    if n - held_count < k:
        raise ValueError(f"tuning recall@{k} needs at least {k + 1} vectors, got {n}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    held, rest = order[:held_count].sort().values, order[held_count:].sort().values
    queries, others = x[held], x[rest]
    _, exact = knn_index(others, metric).search(queries, k)  # positions in ``rest``
    knn = build_approximate(others, metric, kind, seed, ids=rest if kind == "ivf" else None)
    del others  # the index holds its own copy
    recall, params = 0.0, {}
    for params in ladder(knn):
        set_params(knn, params)
        _, found = knn.index.search(queries.numpy(), k)
        found = torch.from_numpy(found)
        if kind == "hnsw":  # graph positions -> database rows (-1: fewer than k found)
            found = torch.where(found >= 0, rest[found.clamp(min=0)], -1)
        recall, error = recall_with_error(found, rest[exact])
        if recall - 2 * error >= target_recall:
            if kind == "ivf":
                knn.index.add_with_ids(queries.numpy(), held.numpy().astype("int64"))
                knn = FaissKnn(x, metric, index=knn.index)
            else:
                knn = None  # free the tuning graph before building the final one
                knn = build_approximate(x, metric, kind, seed)
            set_params(knn, params)
            return Tuned(knn, kind, params, recall, target_recall, k, len(held), error=error)
    reason = f"{kind} reached recall@{k} {recall:.4f} < {target_recall} at {params}: exact search"
    return Tuned(FaissKnn(x, metric), "flat", {}, 1.0, target_recall, k, len(held), reason)
