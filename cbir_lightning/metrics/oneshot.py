"""N-way one-shot evaluation (Koch et al. style): each trial has one query and N candidates,
exactly one of which (the target) shares the query's class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cbir_lightning.metrics.similarity import (
    SimilarityFn,
    batched_similarity,
    check_similarity,
    pairwise_similarity,
    to_common_float,
)


def oneshot_accuracy(scores: Tensor, targets: Tensor) -> float:
    """Fraction of trials whose highest-scoring candidate is the target.

    Args:
        scores: ``[T, N]`` similarity of each trial's query to its N candidates (higher = more similar).
        targets: ``[T]`` index of the correct candidate in each trial.

    Ties: the first (lowest-index) maximal candidate is the prediction (``torch.argmax`` semantics),
    so a tie counts as correct only if the target comes first. Returns NaN for zero trials.
    """
    scores = torch.as_tensor(np.asarray(scores)) if not isinstance(scores, Tensor) else scores
    targets = torch.as_tensor(np.asarray(targets)) if not isinstance(targets, Tensor) else targets
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"Expected scores [T, N] and targets [T]; got {tuple(scores.shape)}, {tuple(targets.shape)}."
        )
    if len(targets) == 0:
        return float("nan")
    targets = targets.to(scores.device).long()
    if targets.min() < 0 or targets.max() >= scores.shape[1]:
        raise ValueError(f"targets must lie in [0, {scores.shape[1]}).")
    predictions = scores.argmax(dim=1)
    return (predictions == targets).double().mean().item()


@torch.no_grad()
def episode_scores(
    embeddings: Tensor,
    queries: Tensor,
    candidates: Tensor,
    similarity: str | SimilarityFn = "cosine",
) -> Tensor:
    """Similarity of each trial's query embedding to its N candidate embeddings.

    Args:
        embeddings: ``[n, d]`` embeddings of all images in the episode pool.
        queries: ``[T]`` row index (into ``embeddings``) of each trial's query.
        candidates: ``[T, N]`` row indices of each trial's candidates.
        similarity: as in :func:`~cbir_lightning.metrics.similarity.pairwise_similarity`; a callable
            is called once per trial with ``query [1, d]`` and ``candidates [N, d]``.

    Returns:
        ``[T, N]`` scores, same values as ``pairwise_similarity`` on the corresponding rows.
    """
    check_similarity(similarity)
    queries, candidates = queries.long(), candidates.long()
    if embeddings.ndim != 2 or candidates.ndim != 2 or queries.shape != (candidates.shape[0],):
        raise ValueError(
            "Expected embeddings [n, d], queries [T], candidates [T, N]; got "
            f"{tuple(embeddings.shape)}, {tuple(queries.shape)}, {tuple(candidates.shape)}."
        )
    embeddings, _ = to_common_float(embeddings, embeddings)
    query_emb = embeddings[queries].unsqueeze(1)  # [T, 1, d]
    cand_emb = embeddings[candidates]  # [T, N, d]
    if callable(similarity):
        rows = [pairwise_similarity(q, c, similarity) for q, c in zip(query_emb, cand_emb, strict=True)]
        return torch.cat(rows) if rows else cand_emb.new_zeros(candidates.shape)
    return batched_similarity(query_emb, cand_emb, similarity).squeeze(1)
