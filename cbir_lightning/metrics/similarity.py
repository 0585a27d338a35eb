"""Pairwise similarity between embedding sets (higher score = more similar).

Built-in metrics:

* ``"cosine"``: dot product of L2-normalised embeddings.
* ``"dot"``: raw dot product.
* ``"l2"``: negative Euclidean distance, computed exactly (``torch.cdist`` without the
  ``|x|^2 + |y|^2 - 2xy`` shortcut, whose cancellation error can reorder near neighbours).
* ``"l1"``: negative L1 (Manhattan) distance.

A callable ``fn(query [c, d], database [m, d]) -> scores [c, m]`` may be passed instead.
Scores are computed in float32, or in float64 when either input is float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

SimilarityFn = Callable[[Tensor, Tensor], Tensor]
SIMILARITIES = ("cosine", "dot", "l2", "l1")


def to_common_float(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Cast both tensors to float64 if either is float64, else to float32."""
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return a.to(dtype), b.to(device=a.device, dtype=dtype)


def check_similarity(metric: str | SimilarityFn) -> None:
    """Raise ``ValueError`` unless ``metric`` is a built-in name or a callable."""
    if not callable(metric) and metric not in SIMILARITIES:
        raise ValueError(f"Unknown similarity {metric!r}; expected one of {SIMILARITIES} or a callable.")


def batched_similarity(query: Tensor, database: Tensor, metric: str) -> Tensor:
    """Built-in similarity for ``[..., n, d]`` x ``[..., m, d]`` -> ``[..., n, m]`` (batch dims allowed)."""
    if metric == "cosine":
        return F.normalize(query, dim=-1) @ F.normalize(database, dim=-1).transpose(-1, -2)
    if metric == "dot":
        return query @ database.transpose(-1, -2)
    if metric == "l2":
        return -torch.cdist(query, database, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    return -torch.cdist(query, database, p=1.0)


def pairwise_similarity(query: Tensor, database: Tensor, metric: str | SimilarityFn = "cosine") -> Tensor:
    """Similarity of every query to every database item.

    Args:
        query: ``[nq, d]`` embeddings.
        database: ``[nd, d]`` embeddings.
        metric: one of ``"cosine"``, ``"dot"``, ``"l2"``, ``"l1"`` or a callable
            ``(query, database) -> [nq, nd]``.

    Returns:
        ``[nq, nd]`` scores, higher = more similar.
    """
    check_similarity(metric)
    if query.ndim != 2 or database.ndim != 2 or query.shape[1] != database.shape[1]:
        raise ValueError(
            f"Expected query [nq, d] and database [nd, d], got {tuple(query.shape)}, {tuple(database.shape)}."
        )
    query, database = to_common_float(query, database)
    if callable(metric):
        scores = metric(query, database)
        expected = (query.shape[0], database.shape[0])
        if tuple(scores.shape) != expected:
            raise ValueError(
                f"Similarity callable returned shape {tuple(scores.shape)}, expected {expected}."
            )
        return scores
    return batched_similarity(query, database, metric)
