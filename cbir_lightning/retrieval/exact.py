"""Exact top-k shared by the exact backends: one canonical score per pair, one tie rule.

A backend proposes ``K >= k`` candidates per query with their float32 scores ``s_1 >= ... >= s_K`` and a
rigorous rounding-error bound ``e`` (``|s - c| <= e`` for the canonical score ``c`` of any item). The
canonical score is a float64 sum of exact float64 products of the float32 inputs (``dot``/``cosine``:
``q . x``; ``l2``: ``-|q - x|^2``); results are ordered by it descending, then database index ascending.

Only candidates that can reach the top ``k`` are re-scored: if ``s_K < s_k - 2e``, every item with
``s < s_k - 2e`` (the other candidates, and all items faiss/torch did not return, ``s <= s_K``) has
``c < s_k - e``, while the ``k`` first candidates have ``c >= s_k - e``; so the top ``k`` lies among the
candidates with ``s >= s_k - 2e`` (usually just ``k``), and re-scoring those is exact. Otherwise all ``K``
are re-scored, and if the ``k``-th canonical score beats ``s_K + e`` the result is exact; else the query
is retried with more candidates, and finally against the whole database. Backends therefore return
identical rankings.
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


CandidateFn = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor]]


def exact_topk(
    query: Tensor,
    database: Tensor,
    k: int,
    metric: str,
    candidates: CandidateFn,
    margin: int = 16,
    block: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` (canonical scores float64 ``[c, k]``, indices int64 ``[c, k]``).

    ``candidates(query_rows, row_ids, K)`` returns ``(indices [c, K], scores [c, K], error [c])``: the
    backend's top ``K``, their float32 scores on the canonical scale (float64 tensor, descending) and a
    bound on ``|float32 score - canonical score|`` for any item. Re-scoring runs ``block`` queries at a time.
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
        found, approx, error = candidates(rows, todo, size)  # the heavy part: multi-threaded
        with single_threaded():  # many small ops: no waiting for busy cores
            cut = approx[:, k - 1] - 2 * error  # below it no candidate can reach the top k
            narrow = (approx[:, -1] < cut) & (approx[:, min(k, size - 1)] < cut)
            wide = (~narrow).nonzero().squeeze(1)
            narrow = narrow.nonzero().squeeze(1)
            for part in narrow.split(block):  # exact from the first k alone (see module docstring)
                top = _rescore(rows[part], found[part, :k], database, metric)
                scores[todo[part]], indices[todo[part]] = top[0], top[1]
            retry = []
            for part in wide.split(block):
                cand_scores, cand = _rescore(rows[part], found[part], database, metric)
                ok = cand_scores[:, k - 1] > approx[part, -1] + error[part]
                scores[todo[part[ok]]], indices[todo[part[ok]]] = cand_scores[ok, :k], cand[ok, :k]
                retry.append(part[~ok])
            todo = todo[torch.cat(retry)] if retry else todo[:0]
        size = min(n, size * 8)
    return scores, indices


def _rescore(query: Tensor, found: Tensor, database: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    """Canonical scores of the candidates ``found [c, K]``, ordered (score descending, index ascending)."""
    items = database.index_select(0, found.reshape(-1)).view(*found.shape, database.shape[1])
    return order_candidates(canonical_scores(query, items, metric), found)


def _full_row(query: Tensor, database: Tensor, k: int, metric: str, block: int = 1 << 16):
    parts = [
        canonical_scores(query[None], database[start : start + block][None], metric)[0]
        for start in range(0, len(database), block)
    ]
    scores = torch.cat(parts)
    order = torch.sort(-scores, stable=True).indices[:k]
    return scores[order], order
