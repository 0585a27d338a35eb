"""alpha-weighted query expansion and database-side augmentation (Radenovic, Tolias, Chum, TPAMI 2018).

Both replace a vector by the L2-normalised sum of itself (weight 1) and its nearest neighbours, each
weighted by ``max(0, similarity) ** alpha``. With ``alpha = 0`` this is average query expansion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _expand(vectors: Tensor, database: Tensor, neighbours: int, alpha: float, skip_self: bool) -> Tensor:
    if neighbours <= 0 or len(database) == 0:
        return F.normalize(vectors, dim=1)
    scores = vectors @ database.T
    if skip_self:  # the vector itself is row i of the database: counted once, with weight 1
        scores.fill_diagonal_(-torch.inf)
    top = min(neighbours, len(database) - int(skip_self))
    values, indices = scores.topk(top, dim=1)
    weights = values.clamp(min=0) ** alpha
    expanded = vectors + (weights[..., None] * database[indices]).sum(1)
    return F.normalize(expanded, dim=1)


def alpha_query_expansion(query: Tensor, database: Tensor, neighbours: int = 2, alpha: float = 3.0) -> Tensor:
    """New queries ``[nq, d]``: ``normalize(q + sum_i max(0, q.x_i)^alpha x_i)`` over the query's top
    ``neighbours`` database items ``x_i`` (by dot product). Search again with them."""
    return _expand(query, database, neighbours, alpha, skip_self=False)


def database_side_augmentation(database: Tensor, neighbours: int = 2, alpha: float = 3.0) -> Tensor:
    """Augmented database ``[n, d]``: every item becomes ``normalize(x + sum_j max(0, x.x_j)^alpha x_j)``
    over its top ``neighbours`` other items. Queries are then searched against it as usual."""
    return _expand(database, database, neighbours, alpha, skip_self=True)
