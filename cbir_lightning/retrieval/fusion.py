"""Reciprocal rank fusion: several rankings of one collection into one (``search --text --query``)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

RRF_K = 60  # Cormack, Clarke and Buettcher (SIGIR 2009): the constant that damps the top ranks


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]],
    weights: Sequence[float] | None = None,
    k: float = RRF_K,
) -> list[tuple[Hashable, float]]:
    """Fuse ``rankings`` (each a list of item ids, best first) into one ranking, best first.

    ``score(d) = sum_i w_i / (k + rank_i(d))`` over the rankings ``i`` that hold ``d``, ``rank_i`` counting
    from 1 (an item a ranking lacks adds nothing); ``w_i`` are ``weights`` (default all 1). Ties keep the
    order in which items were first met (ranking by ranking, rank by rank). Returns ``[(id, score)]``.
    """
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if k < 0 or any(w < 0 for w in weights):
        raise ValueError("reciprocal rank fusion needs k >= 0 and weights >= 0")
    scores: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])  # stable: ties in first-met order
