"""Retrieval metrics for embedding-based image retrieval (pure tensor functions).

Conventions (per query; ``R`` = number of relevant database items, relevance = equal labels):

* Ranking / tie rule: database items are ordered by score descending; equal scores are ordered
  by ascending database index (stable sort of ``-scores``; NaN scores go last). This makes every
  metric deterministic, also with duplicate embeddings.
* ``mAP``: non-interpolated average precision over the full ranking,
  ``AP = (1/R) * sum_{k: item k relevant} precision@k``.
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

Queries without any relevant database item are skipped: they enter no mean and are not counted in
``num_queries``. All means are unweighted over the scored queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cbir_lightning.metrics.similarity import (
    SimilarityFn,
    check_similarity,
    pairwise_similarity,
    to_common_float,
)


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


def _chunk_metrics(scores: Tensor, relevant: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-query metric values (float64) for one chunk of queries.

    ``scores`` and ``relevant`` are ``[c, n]`` over the candidate items of each query. Queries with no
    relevant item are dropped from the returned vectors.
    """
    keep = relevant.any(dim=1)
    rel = ranked_relevance(scores[keep], relevant[keep])
    n = rel.shape[1]
    num_pos = rel.sum(1)
    hits = torch.cumsum(rel, dim=1, dtype=torch.float64)
    ranks = torch.arange(1, n + 1, device=rel.device, dtype=torch.float64)
    prec_at_hits = torch.where(rel, hits / ranks, 0.0)  # precision@rank at relevant ranks, 0 elsewhere
    # ap_sum[:, m] = sum of prec_at_hits over the top m ranks. A running sum (rather than .sum) keeps
    # every row's rounding independent of how many rows the chunk has, hence of chunk_size.
    ap_sum = torch.cat([prec_at_hits.new_zeros(len(rel), 1), prec_at_hits.cumsum(1)], dim=1)
    out = {
        "mAP": ap_sum[:, n] / num_pos,
        "mAP@R": ap_sum.gather(1, num_pos[:, None]).squeeze(1) / num_pos,
    }
    for k in ks:
        out[f"mAP@{k}"] = ap_sum[:, min(k, n)] / num_pos.clamp(max=k)
    for k in ks:
        out[f"recall@{k}"] = rel[:, :k].any(1).to(torch.float64)
    for k in ks:
        out[f"precision@{k}"] = rel[:, :k].sum(1, dtype=torch.float64) / k
    return out


def _without_diagonal(x: Tensor, offset: int) -> Tensor:
    """Drop entry ``(i, offset + i)`` from each row of ``x`` ``[c, nd]`` -> ``[c, nd - 1]``."""
    rows = torch.arange(x.shape[0], device=x.device)
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[rows, rows + offset] = False
    return x[keep].view(x.shape[0], x.shape[1] - 1)


def _as_tensor(x) -> Tensor:
    return torch.from_numpy(np.asarray(x)) if not isinstance(x, Tensor) else x


@torch.no_grad()
def retrieval_metrics(
    query,
    database,
    query_labels,
    database_labels,
    *,
    similarity: str | SimilarityFn = "cosine",
    ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Rank the database for every query and compute retrieval metrics (see module docstring).

    Args:
        query: ``[nq, d]`` query embeddings (tensor or numpy array).
        database: ``[nd, d]`` database embeddings.
        query_labels: ``[nq]`` labels; a database item is relevant iff its label equals the query's.
        database_labels: ``[nd]`` labels.
        similarity: see :func:`~cbir_lightning.metrics.similarity.pairwise_similarity`.
        ks: cut-offs for ``mAP@k``, ``recall@k`` and ``precision@k``.
        exclude_self: the query set *is* the database (same rows, same order); query ``i`` never
            retrieves database item ``i``, which is removed from its ranking.
        chunk_size: number of queries scored at once; peak memory is ``O(chunk_size * nd)``. The
            metrics do not depend on it, except that BLAS may round a query's scores differently
            (by a few ulps) for different chunk shapes, which can only swap items that close.

    Returns:
        ``{"mAP", "mAP@R", "mAP@{k}", "recall@{k}", "precision@{k}", "num_queries"}`` as Python floats.
        Metrics are NaN when no query has a relevant item (``num_queries == 0``).
    """
    query, database = _as_tensor(query), _as_tensor(database)
    device = query.device
    query_labels = _as_tensor(query_labels).to(device)
    database_labels = _as_tensor(database_labels).to(device)
    database = database.to(device)
    if (
        query.ndim != 2
        or database.ndim != 2
        or query.shape[1] != database.shape[1]
        or query_labels.shape != (query.shape[0],)
        or database_labels.shape != (database.shape[0],)
    ):
        raise ValueError(
            "Expected query [nq, d], database [nd, d], query_labels [nq], database_labels [nd]; got "
            f"query {tuple(query.shape)}, database {tuple(database.shape)}, "
            f"query_labels {tuple(query_labels.shape)}, database_labels {tuple(database_labels.shape)}."
        )
    if exclude_self and (len(query) != len(database) or not torch.equal(query_labels, database_labels)):
        raise ValueError(
            "exclude_self=True requires the query set to be the database (same length and labels); got "
            f"{len(query)} queries and {len(database)} database items."
        )
    ks = tuple(ks)
    if not all(isinstance(k, int) and k > 0 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    check_similarity(similarity)
    if similarity == "cosine":  # normalise the database once instead of once per chunk
        query, database = to_common_float(query, database)
        query, database = F.normalize(query, dim=1), F.normalize(database, dim=1)
        similarity = "dot"

    per_query: dict[str, list[Tensor]] = {}
    for start in range(0, len(query), chunk_size):
        stop = min(start + chunk_size, len(query))
        scores = pairwise_similarity(query[start:stop], database, similarity)
        relevant = query_labels[start:stop, None] == database_labels[None, :]
        if exclude_self:
            scores, relevant = _without_diagonal(scores, start), _without_diagonal(relevant, start)
        for name, values in _chunk_metrics(scores, relevant, ks).items():
            per_query.setdefault(name, []).append(values)

    if not per_query:  # no queries at all: still return every key
        per_query = _chunk_metrics(torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.bool), ks)
        per_query = {name: [values] for name, values in per_query.items()}
    result = {name: torch.cat(values).mean().item() for name, values in per_query.items()}
    result["num_queries"] = float(sum(len(v) for v in per_query["mAP"]))
    return result
