"""Exact top-k shared by the exact backends: one canonical score per pair, one tie rule.

A backend proposes ``K >= k`` candidates per query from its own float32 scores, plus an upper bound on
the score any other item can have (its ``K``-th score plus a rigorous rounding-error bound). The
candidates are re-scored canonically: float64 sums of exact float64 products of the float32 inputs
(``dot``/``cosine``: ``q . x``; ``l2``: ``-|q - x|^2``), ordered by score descending, then database index
ascending. If the ``k``-th canonical score beats the bound, no other item can enter the top ``k`` and the
result is exact; otherwise the query is retried with more candidates, and finally against the whole
database. Backends that pass this check therefore return identical rankings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cbir_lightning.metrics.threads import single_threaded

# |fl(sum of d products) - exact| <= gamma_d * sum |products|, gamma_d = d u / (1 - d u), u = 2^-24
_U32 = 2.0**-24


def rounding_bound(d: int, query_norm: Tensor, database_norm: float, metric: str) -> Tensor:
    """Bound on |float32 score - exact score| for one query against any database item ([c] float64)."""
    gamma = (d + 2) * _U32 / (1 - (d + 2) * _U32) + (d + 2) * 2.0**-53  # float32 + canonical float64
    q = query_norm.double()
    if metric == "l2":  # |x|^2 - 2 q.x (+ |q|^2) computed in float32
        return 4 * gamma * (q + database_norm) ** 2
    return 2 * gamma * q * database_norm


def canonical_scores(query: Tensor, items: Tensor, metric: str) -> Tensor:
    """``[c, K]`` float64 scores of ``query [c, d]`` against ``items [c, K, d]`` (float32 inputs)."""
    q = query.double()[:, None, :]
    x = items.double()
    if metric == "l2":
        return -((q - x) ** 2).sum(-1)
    return (q * x).sum(-1)


def order_candidates(scores: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by score descending, then index ascending."""
    by_index = torch.sort(indices, dim=1, stable=True).indices
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    by_score = torch.sort(-scores, dim=1, stable=True).indices
    return scores.gather(1, by_score), indices.gather(1, by_score)


CandidateFn = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]


def exact_topk(
    query: Tensor, database: Tensor, k: int, metric: str, candidates: CandidateFn, margin: int = 16
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` (canonical scores float64 ``[c, k]``, indices int64 ``[c, k]``).

    ``candidates(query_rows, row_ids, K)`` returns ``(indices [c, K], bound [c])``: the backend's top
    ``K`` and an upper bound on the canonical score of every item it did not return.
    """
    n = len(database)
    k = min(k, n)
    scores = torch.empty(len(query), k, dtype=torch.float64)
    indices = torch.empty(len(query), k, dtype=torch.int64)
    todo = torch.arange(len(query))
    size = min(n, k + margin)
    while len(todo):
        rows = query[todo]
        if size >= n:  # the whole database: exact by construction
            with single_threaded():
                for i, row in enumerate(todo.tolist()):
                    scores[row], indices[row] = _full_row(rows[i], database, k, metric)
            break
        found, bound = candidates(rows, todo, size)  # the heavy part: multi-threaded
        with single_threaded():  # many small ops: no waiting for busy cores
            items = database.index_select(0, found.reshape(-1)).view(*found.shape, -1)
            cand_scores, found = order_candidates(canonical_scores(rows, items, metric), found)
            ok = cand_scores[:, k - 1] > bound
            scores[todo[ok]], indices[todo[ok]] = cand_scores[ok, :k], found[ok, :k]
            todo = todo[~ok]
        size = min(n, size * 8)
    return scores, indices


def _full_row(query: Tensor, database: Tensor, k: int, metric: str, block: int = 1 << 16):
    parts = [
        canonical_scores(query[None], database[start : start + block][None], metric)[0]
        for start in range(0, len(database), block)
    ]
    scores = torch.cat(parts)
    order = torch.sort(-scores, stable=True).indices[:k]
    return scores[order], order
