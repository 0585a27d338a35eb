"""Learned (Lw) and PCA whitening of descriptors, as in Radenović et al. / cirtorch (pure functions).

A whitening is ``{"kind", "mean": [D], "projection": [d, D]}``; applying it gives
``normalize((x - mean) @ projection.T)``. ``d < D`` reduces the dimension (the leading rows, ordered
by decreasing variance).

Lw (``learn_lw``) from matching pairs ``(i, j)`` of descriptors ``X``: ``mean`` is the mean of the
pairs' first images (cirtorch centres on the query images), ``C_S`` the covariance of the matching
differences ``X_i - X_j``, ``C_D`` the scatter of ``(X - mean)`` over all descriptors, and
``P = eig(C_S^(-1/2) C_D C_S^(-1/2))^T C_S^(-1/2)``, eigenvectors by decreasing eigenvalue. After Lw
the matching differences have identity covariance. (cirtorch uses the Cholesky factor for
``C_S^(-1/2)``; any square root gives the same ``P`` up to the signs of its rows.)

PCA whitening (``learn_pca``): ``P = diag(lambda)^(-1/2) V^T`` of the descriptors' covariance, so the
whitened descriptors (before the final L2 normalisation) have identity covariance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("lw", "pca")


def _eigh_descending(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return values.flip(0), vectors.flip(1)


def _floor(values: torch.Tensor, rel: float = 1e-10) -> torch.Tensor:
    """Eigenvalues kept positive: at least ``rel`` times the largest (a rank-deficient covariance)."""
    return values.clamp(min=float(values.max().clamp(min=1e-30)) * rel)


def inverse_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric ``matrix^(-1/2)`` of a symmetric positive (semi-)definite matrix."""
    values, vectors = _eigh_descending(matrix)
    return vectors @ torch.diag(_floor(values).rsqrt()) @ vectors.T


def _result(kind: str, mean: torch.Tensor, projection: torch.Tensor, dim: int | None, dtype) -> dict:
    if dim is not None:
        if not 0 < dim <= projection.shape[0]:
            raise ValueError(f"whitening dim {dim} must be between 1 and {projection.shape[0]}")
        projection = projection[:dim]
    return {"kind": kind, "mean": mean.to(dtype), "projection": projection.to(dtype).contiguous()}


def learn_lw(descriptors: torch.Tensor, pairs: torch.Tensor, dim: int | None = None) -> dict:
    """Learned whitening from ``descriptors [N, D]`` and matching ``pairs [P, 2]`` (row indices)."""
    x = descriptors.double()
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(f"pairs must be a [P, 2] index tensor, got shape {tuple(pairs.shape)}")
    mean = x[pairs[:, 0]].mean(dim=0)
    differences = x[pairs[:, 0]] - x[pairs[:, 1]]
    c_s = differences.T @ differences / len(differences)
    root = inverse_sqrt(c_s)
    centred = (x - mean) @ root.T
    _, vectors = _eigh_descending(centred.T @ centred)
    return _result("lw", mean, vectors.T @ root, dim, descriptors.dtype)


def learn_pca(descriptors: torch.Tensor, dim: int | None = None) -> dict:
    """PCA whitening of ``descriptors [N, D]``."""
    x = descriptors.double()
    mean = x.mean(dim=0)
    centred = x - mean
    values, vectors = _eigh_descending(centred.T @ centred / len(x))
    return _result("pca", mean, torch.diag(_floor(values).rsqrt()) @ vectors.T, dim, descriptors.dtype)


def apply_whitening(x: torch.Tensor, whitening: dict) -> torch.Tensor:
    """``normalize((x - mean) @ projection.T)`` in ``x``'s dtype and device."""
    mean = whitening["mean"].to(x.device, x.dtype)
    projection = whitening["projection"].to(x.device, x.dtype)
    return F.normalize((x - mean) @ projection.T, dim=1)
