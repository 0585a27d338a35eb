"""Diffusion on the mutual k-NN graph of the database (Iscen, Tolias, Avrithis, Furon, Chum, CVPR 2017).

Follows the authors' code (github.com/ahmetius/diffusion-retrieval, global descriptors):
``A_ij = max(0, x_i.x_j)^gamma`` when ``i`` and ``j`` are in each other's ``k`` nearest neighbours
(each item counts as its own first neighbour; the diagonal is then zeroed), ``S = D^-1/2 A D^-1/2``;
a query's ``y`` keeps its ``kq`` best database scores raised to ``gamma``; the ranking scores ``f``
solve ``(I - alpha S) f = y`` by conjugate gradient (``iterations``, ``tol``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import cg
from torch import Tensor


def mutual_knn_affinity(
    database: Tensor, k: int = 50, gamma: float = 3.0, chunk: int = 4096
) -> sparse.csr_matrix:
    """Sparse symmetric affinity ``[n, n]`` of the mutual ``k``-NN graph (dot-product similarities)."""
    n = len(database)
    k = min(k, n)
    database = database.double()
    values, indices = [], []
    for start in range(0, n, chunk):  # memory O(chunk x n)
        top = (database[start : start + chunk] @ database.T).topk(k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    values, indices = torch.cat(values).numpy(), torch.cat(indices).numpy()
    rows = np.repeat(np.arange(n), k)
    weights = sparse.csr_matrix((np.maximum(values.ravel(), 0) ** gamma, (rows, indices.ravel())), (n, n))
    member = sparse.csr_matrix((np.ones(n * k), (rows, indices.ravel())), (n, n))
    affinity = weights.multiply(member.T).tocsr()  # kept iff j in knn(i) and i in knn(j)
    affinity.setdiag(0)
    affinity.eliminate_zeros()
    return affinity


def transition_matrix(affinity: sparse.spmatrix) -> sparse.csr_matrix:
    """``D^-1/2 A D^-1/2`` (isolated nodes keep zero rows)."""
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    d = sparse.diags(inv_sqrt)
    return (d @ affinity @ d).tocsr()


def diffusion_scores(
    query_scores: Tensor,
    affinity: sparse.spmatrix,
    alpha: float = 0.99,
    kq: int = 10,
    gamma: float = 3.0,
    iterations: int = 20,
    tol: float = 1e-6,
) -> Tensor:
    """Diffused scores ``[nq, n]`` (float64) from the queries' scores ``[nq, n]`` against the database."""
    n = affinity.shape[0]
    system = sparse.identity(n, format="csr") - alpha * transition_matrix(affinity)
    out = torch.zeros(query_scores.shape, dtype=torch.float64)
    kq = min(kq, n)
    for row, scores in enumerate(query_scores.double()):
        values, indices = scores.topk(kq)
        y = np.zeros(n)
        y[indices.numpy()] = values.clamp(min=0).numpy() ** gamma
        f, _ = cg(system, y, rtol=tol, maxiter=iterations)
        out[row] = torch.from_numpy(f)
    return out
