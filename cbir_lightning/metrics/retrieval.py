"""Retrieval metrics for embedding-based image retrieval (pure tensor functions).

Conventions (per query; ``R`` = number of positives, i.e. relevant database items that are not junk):

* Relevance: from labels (a database item is a positive iff its label equals the query's), or from
  per-query lists of positive and junk database indices. Junk items are taken out of the query's
  ranking (they neither help nor hurt); ``exclude_self`` makes each query's own item junk.
* Ranking / tie rule: database items are ordered by score descending; equal scores are ordered by
  ascending database index (``-0.0 == +0.0``; NaN scores go last). This makes every metric
  deterministic, also with duplicate embeddings. See :mod:`cbir_lightning.metrics.ranking` for how the
  ranks of the positives are found without sorting the database.
* ``mAP``: non-interpolated average precision over the full ranking,
  ``AP = (1/R) * sum_{k: item k relevant} precision@k``. With ``ap_rule="trapezoid"``: the area under
  the precision-recall curve by the trapezoid rule, as the Revisited Oxford/Paris code computes it.
* ``mAP@R``: as in pytorch-metric-learning's ``mean_average_precision_at_r``: the AP sum restricted
  to the top ``R`` ranks, divided by ``R``.
* ``mAP@k``: the AP sum restricted to the top ``k`` ranks, divided by ``min(k, R)`` (so a perfect
  top-k ranking scores 1). Note: pytorch-metric-learning's ``mean_average_precision`` with a finite
  ``k`` divides by ``R`` instead, and torchmetrics' ``RetrievalMAP(top_k=k)`` by the number of
  relevant items found in the top k.
* ``recall@k``: 1 if at least one relevant item is in the top ``k``, else 0 (the metric-learning
  "Recall@K", equal to torchmetrics' ``RetrievalHitRate(top_k=k)``), averaged over queries.
* ``precision@k``: (number of relevant items in the top ``k``) / ``k`` (torchmetrics'
  ``RetrievalPrecision(top_k=k)``; still divided by ``k`` when fewer than ``k`` items exist).
* ``mP@k`` (only with ``mp_at_k=True``): the Revisited Oxford/Paris "mP@k": precision at
  ``k' = min(k, rank of the last positive)``, i.e. (positives in the top ``k'``) / ``k'``.

Queries without any positive are skipped: they enter no mean and are not counted in
``num_queries``. All means are unweighted over the scored queries. Work is chunked over queries:
peak memory is ``O(chunk_size * nd)`` per worker thread on top of the embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cbir_lightning.metrics.ranking import positive_ranks
from cbir_lightning.metrics.relevance import LabelRelevance, ListRelevance, as_tensor, label_codes
from cbir_lightning.metrics.similarity import (
    SimilarityFn,
    check_similarity,
    pairwise_similarity,
    to_common_float,
)
from cbir_lightning.metrics.threads import parallel_map, single_threaded

CHUNK_ELEMENTS = 1 << 22  # default chunk: queries x database scores held at once (16 MB in float32)
MIN_CHUNK = 64  # ...but at least this many queries, so that the matmul stays efficient


def ranked_relevance(scores: Tensor, relevant: Tensor) -> Tensor:
    """Reorder ``relevant`` ``[c, nd]`` by descending ``scores`` (ties: lower database index first)."""
    order = torch.argsort(-scores, dim=-1, stable=True)
    return relevant.bool().gather(-1, order)


def average_precision(ranked_rel: Tensor, num_positives: Tensor | None = None) -> Tensor:
    """Non-interpolated AP of ranked relevance rows ``[c, n]`` -> ``[c]`` (float64).

    ``num_positives`` (``R``) defaults to the number of relevant items in each row; pass it when the
    ranking is truncated. Rows with ``R == 0`` give NaN.
    """
    rel = ranked_rel.bool()
    positives = rel.sum(-1) if num_positives is None else torch.as_tensor(num_positives, device=rel.device)
    hits = torch.cumsum(rel, dim=-1, dtype=torch.float64)
    ranks = torch.arange(1, rel.shape[-1] + 1, device=rel.device, dtype=torch.float64)
    summed = torch.where(rel, hits / ranks, 0.0).sum(-1)
    positives = positives.to(torch.float64)
    return torch.where(positives > 0, summed / positives, torch.nan)


def metrics_from_ranks(ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, Tensor]:
    """Per-query metrics from the sorted 1-based ranks of each query's positives.

    Args:
        ranks: ``[c, P]`` ranks in ascending order, ``inf`` as padding (see
            :func:`~cbir_lightning.metrics.ranking.positive_ranks`).
        ks: cut-offs.

    Returns:
        float64 ``[c]`` tensors ``AP``, ``AP_trapezoid``, ``AP@R``, ``AP@{k}``, ``recall@{k}``,
        ``precision@{k}``, ``P@{k}`` (the revisited protocol's precision at ``min(k, last positive)``)
        and ``num_positives``; NaN for queries without positives.
    """
    ranks = ranks.double()
    if ranks.shape[1] == 0:  # no positives at all: one column of padding keeps the shapes simple
        ranks = torch.full((len(ranks), 1), torch.inf, dtype=torch.float64, device=ranks.device)
    c, width = ranks.shape
    found = torch.isfinite(ranks)
    num_pos = found.sum(1).double()
    i = torch.arange(1, width + 1, dtype=torch.float64, device=ranks.device)
    precision = torch.where(found, i / ranks, 0.0)  # precision at each positive's rank
    # running sums (not .sum) keep each row's rounding independent of the chunk's padding width
    ap_sum = torch.cat([precision.new_zeros(c, 1), precision.cumsum(1)], dim=1)
    before = torch.where(ranks > 1, (i - 1) / (ranks - 1), 1.0)  # precision just before the positive
    trapezoid = torch.where(found, (before + precision) / 2, 0.0).cumsum(1)
    last = ranks.gather(1, (num_pos.long() - 1).clamp(min=0)[:, None]).squeeze(1)
    nan = torch.full_like(num_pos, torch.nan)

    def within(k: Tensor | float) -> Tensor:
        k = torch.as_tensor(k, dtype=torch.float64, device=ranks.device)
        return (ranks <= (k[:, None] if k.ndim else k)).sum(1)

    def per_query(values: Tensor) -> Tensor:
        return torch.where(num_pos > 0, values, nan)

    out = {
        "AP": per_query(ap_sum[:, -1] / num_pos),
        "AP_trapezoid": per_query(trapezoid[:, -1] / num_pos),
        "AP@R": per_query(ap_sum.gather(1, within(num_pos)[:, None]).squeeze(1) / num_pos),
    }
    for k in ks:
        out[f"AP@{k}"] = per_query(ap_sum.gather(1, within(k)[:, None]).squeeze(1) / num_pos.clamp(max=k))
    for k in ks:
        out[f"recall@{k}"] = per_query((within(k) > 0).double())
    for k in ks:
        out[f"precision@{k}"] = per_query(within(k).double() / k)
    for k in ks:
        cut = torch.minimum(last, torch.tensor(float(k), dtype=torch.float64))
        out[f"P@{k}"] = per_query(within(cut).double() / cut)
    out["num_positives"] = num_pos
    return out


def _check_inputs(query, database, query_labels, database_labels, positives, exclude_self) -> None:
    labels = query_labels is not None or database_labels is not None
    if labels == (positives is not None):
        raise ValueError("Give relevance either as query_labels and database_labels or as positives lists.")
    if labels and (
        query.ndim != 2
        or database.ndim != 2
        or query.shape[1] != database.shape[1]
        or query_labels is None
        or database_labels is None
        or query_labels.shape != (query.shape[0],)
        or database_labels.shape != (database.shape[0],)
    ):
        raise ValueError(
            "Expected query [nq, d], database [nd, d], query_labels [nq], database_labels [nd]; got "
            f"query {tuple(query.shape)}, database {tuple(database.shape)}, query_labels "
            f"{_shape(query_labels)}, database_labels {_shape(database_labels)}."
        )
    if not labels and (
        query.ndim != 2
        or database.ndim != 2
        or query.shape[1] != database.shape[1]
        or len(positives) != len(query)
    ):
        raise ValueError(
            "Expected query [nq, d], database [nd, d] and nq positives lists; got query "
            f"{tuple(query.shape)}, database {tuple(database.shape)}, {len(positives)} positives lists."
        )
    if exclude_self and (
        len(query) != len(database) or (labels and not torch.equal(query_labels, database_labels))
    ):
        raise ValueError(
            "exclude_self=True requires the query set to be the database (same length and labels); got "
            f"{len(query)} queries and {len(database)} database items."
        )


def _shape(x) -> tuple | None:
    return None if x is None else tuple(x.shape)


@torch.no_grad()
def per_query_metrics(
    query,
    database,
    query_labels=None,
    database_labels=None,
    *,
    positives: Sequence[Sequence[int]] | None = None,
    junk: Sequence[Sequence[int]] | None = None,
    similarity: str | SimilarityFn = "cosine",
    ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
    chunk_size: int | None = None,
    return_ranks: bool = False,
) -> dict:
    """Rank the database for every query; per-query metrics (see :func:`metrics_from_ranks`).

    Arguments as in :func:`retrieval_metrics`. Returns ``[nq]`` float64 tensors (NaN for queries
    without positives) and, with ``return_ranks``, ``"ranks"``: per query, the ascending 1-based ranks
    of its positives among its non-junk database items (int64 tensors).
    """
    query, database = as_tensor(query), as_tensor(database)
    device = query.device
    database = database.to(device)
    if query_labels is not None and database_labels is not None:
        query_labels, database_labels = label_codes(query_labels, database_labels)
    else:
        query_labels = None if query_labels is None else as_tensor(query_labels)
        database_labels = None if database_labels is None else as_tensor(database_labels)
    _check_inputs(query, database, query_labels, database_labels, positives, exclude_self)
    ks = tuple(ks)
    if not all(isinstance(k, int) and k > 0 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}.")
    if chunk_size is None:
        chunk_size = max(MIN_CHUNK, CHUNK_ELEMENTS // max(len(database), 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    check_similarity(similarity)
    if positives is not None:
        relevance = ListRelevance(positives, junk, len(database), exclude_self)
    else:
        relevance = LabelRelevance(query_labels, database_labels, exclude_self)
    if similarity == "cosine":  # normalise the database once instead of once per chunk
        query, database = to_common_float(query, database)
        query, database = F.normalize(query, dim=1), F.normalize(database, dim=1)
        similarity = "dot"

    workers = torch.get_num_threads()

    def score(start: int, ranking_workers: int = 1) -> dict:
        stop = min(start + chunk_size, len(query))
        scores = pairwise_similarity(query[start:stop], database, similarity)
        with single_threaded():  # the rest is many small ops: no waiting for busy cores
            chunk_positives, chunk_junk = relevance.chunk(start, stop)
            ranks = positive_ranks(scores, chunk_positives, chunk_junk, ranking_workers)
            del scores
            values = {name: v.cpu() for name, v in metrics_from_ranks(ranks, ks).items()}
            if return_ranks:
                values["ranks"] = [row[torch.isfinite(row)].long().cpu() for row in ranks]
        return values

    starts = range(0, len(query), chunk_size)
    if workers > 1 and len(starts) > 1 and query.device.type == "cpu":
        # chunks side by side, one thread each (matmul included): nothing waits for a busy core
        results = parallel_map(score, starts, workers)
    else:  # one chunk: a multi-threaded matmul, then blocks of rows side by side
        results = [score(start, workers) for start in starts]
    if not results:
        results = [metrics_from_ranks(torch.zeros(0, 0), ks) | {"ranks": []}]
    out = {name: torch.cat([r[name] for r in results]) for name in results[0] if name != "ranks"}
    if return_ranks:
        out["ranks"] = [row for r in results for row in r["ranks"]]
    return out


_MEAN_NAMES = {"AP": "mAP", "AP@R": "mAP@R"}


@torch.no_grad()
def retrieval_metrics(
    query,
    database,
    query_labels=None,
    database_labels=None,
    *,
    positives: Sequence[Sequence[int]] | None = None,
    junk: Sequence[Sequence[int]] | None = None,
    similarity: str | SimilarityFn = "cosine",
    ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
    chunk_size: int | None = None,
    ap_rule: str = "step",
    mp_at_k: bool = False,
) -> dict[str, float]:
    """Rank the database for every query and compute retrieval metrics (see module docstring).

    Args:
        query: ``[nq, d]`` query embeddings (tensor or numpy array).
        database: ``[nd, d]`` database embeddings.
        query_labels: ``[nq]`` labels; a database item is relevant iff its label equals the query's.
        database_labels: ``[nd]`` labels.
        positives: instead of labels: per query, the database indices of its positives.
        junk: with ``positives``: per query, database indices taken out of its ranking.
        similarity: see :func:`~cbir_lightning.metrics.similarity.pairwise_similarity`.
        ks: cut-offs for ``mAP@k``, ``recall@k``, ``precision@k`` (and ``mP@k``).
        exclude_self: the query set *is* the database (same rows, same order); query ``i`` never
            retrieves database item ``i``, which is removed from its ranking.
        chunk_size: number of queries scored at once; peak memory is ``O(workers * chunk_size * nd)``
            (``workers = torch.get_num_threads()`` chunks run side by side). Default: as many as keep
            ``chunk_size * nd`` near 2**22 scores (at least 64 queries). The metrics do not depend on
            it, except that BLAS may round a query's scores differently (by a few ulps) for different
            chunk shapes, which can only swap items that close.
        ap_rule: ``"step"`` (non-interpolated AP) or ``"trapezoid"`` (revisited Oxford/Paris AP) for ``mAP``.
        mp_at_k: also report ``mP@k`` as the revisited Oxford/Paris code defines it.

    Returns:
        ``{"mAP", "mAP@R", "mAP@{k}", "recall@{k}", "precision@{k}", "num_queries"}`` (plus ``mP@{k}``)
        as Python floats. Metrics are NaN when no query has a relevant item (``num_queries == 0``).
    """
    if ap_rule not in ("step", "trapezoid"):
        raise ValueError(f"ap_rule must be 'step' or 'trapezoid', got {ap_rule!r}.")
    per_query = per_query_metrics(
        query,
        database,
        query_labels,
        database_labels,
        positives=positives,
        junk=junk,
        similarity=similarity,
        ks=ks,
        exclude_self=exclude_self,
        chunk_size=chunk_size,
    )
    scored = per_query["num_positives"] > 0
    if ap_rule == "trapezoid":
        per_query["AP"] = per_query["AP_trapezoid"]
    names = ["AP", "AP@R", *(f"AP@{k}" for k in ks), *(f"recall@{k}" for k in ks)]
    names += [f"precision@{k}" for k in ks] + ([f"P@{k}" for k in ks] if mp_at_k else [])
    result = {}
    for name in names:
        key = _MEAN_NAMES.get(name) or ("m" + name if name.startswith(("AP@", "P@")) else name)
        result[key] = per_query[name][scored].mean().item()
    result["num_queries"] = float(scored.sum())
    return result
