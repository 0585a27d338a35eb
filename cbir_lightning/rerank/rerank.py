"""One entry point: re-ranked scores of queries against a database for ``none|aqe|dba|diffusion``."""

from __future__ import annotations

import torch
from torch import Tensor

from cbir_lightning.errors import CbirError
from cbir_lightning.rerank.diffusion import diffusion_scores, mutual_knn_affinity
from cbir_lightning.rerank.expansion import alpha_query_expansion, database_side_augmentation

RERANKERS = ("none", "aqe", "dba", "diffusion")


def check_reranker(name: str) -> str:
    if name not in RERANKERS:
        raise CbirError(f"--rerank must be one of {', '.join(RERANKERS)}, got {name!r}")
    return name


def rerank_scores(
    name: str,
    query: Tensor,
    database: Tensor,
    neighbours: int = 2,
    alpha: float = 3.0,
    graph_k: int = 50,
    kq: int = 10,
    diffusion_alpha: float = 0.99,
    gamma: float = 3.0,
    clamp: bool = True,
) -> Tensor:
    """Scores ``[nq, n]`` (higher = better) of L2-normalised ``query [nq, d]`` vs ``database [n, d]``.

    ``none``: dot products; ``aqe``: alpha-QE queries (``neighbours``, ``alpha``) vs the database;
    ``dba``: the queries vs the augmented database (DBA; items replaced by their neighbourhood means);
    ``diffusion``: diffusion over the database's mutual ``graph_k``-NN graph (``kq``, ``diffusion_alpha``,
    ``gamma``); the items it does not reach follow, by their plain scores (clipped to ``[-1, 1]`` unless
    ``clamp=False``, as the image search's shortlist re-ranking does). The one dispatch of re-ranking:
    ``evaluate`` calls it on whole databases, ``search`` on each query's shortlist.
    """
    check_reranker(name)
    query, database = query.double(), database.double()
    if name == "none":
        return query @ database.T
    if name == "aqe":
        return alpha_query_expansion(query, database, neighbours, alpha) @ database.T
    if name == "dba":
        return query @ database_side_augmentation(database, neighbours, alpha).T
    affinity = mutual_knn_affinity(database, graph_k, gamma)
    scores = diffusion_scores(query @ database.T, affinity, diffusion_alpha, kq, gamma)
    # items the diffusion never reaches score 0: order them after, by their plain scores
    plain = query @ database.T
    return torch.where(scores > 0, scores + 2.0, plain.clamp(-1, 1) + 0.0 if clamp else plain)


def reranked_similarity(name: str, query: Tensor, database: Tensor, **options):
    """``(query_rows, database_rows, similarity)`` that score with :func:`rerank_scores`' matrix (``options``:
    its keyword arguments): the rows are stand-ins (their index) and the similarity looks the scores up,
    so a metric engine that takes descriptors and a similarity function scores the re-ranked lists."""
    scores = rerank_scores(name, query, database, **options)
    rows = [torch.arange(n, dtype=torch.float64)[:, None] for n in (len(query), len(database))]

    def similarity(q: Tensor, x: Tensor) -> Tensor:
        return scores[q[:, 0].long()][:, x[:, 0].long()]

    return rows[0], rows[1], similarity
