"""Whitening against its defining properties and against cirtorch's numpy algorithm (re-derived here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from cbir_lightning.errors import CbirError
from cbir_lightning.whitening import (
    apply_whitening,
    learn_lw,
    learn_pca,
    load_whitening,
    save_whitening,
    whitening_path,
)
from cbir_lightning.whitening.fit import fit_whitening


def _descriptors(n=400, d=8, seed=0):
    """Correlated descriptors in clusters of 4 (matching pairs = members of a cluster)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    centres = torch.randn(n // 4, d, generator=g, dtype=torch.float64) * 3
    x = (centres.repeat_interleave(4, 0) + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)) @ mixing
    pairs = torch.tensor(
        [(4 * c + i, 4 * c + j) for c in range(n // 4) for i in range(4) for j in range(i + 1, 4)]
    )
    return x, pairs


def _np_cirtorch_whitenlearn(X, qidxs, pidxs):
    """cirtorch.utils.whiten.whitenlearn, columns are descriptors: Cholesky factor, eig of C_D."""
    m = X[:, qidxs].mean(axis=1, keepdims=True)
    df = X[:, qidxs] - X[:, pidxs]
    S = df @ df.T / df.shape[1]
    P = np.linalg.inv(np.linalg.cholesky(S))
    df = P @ (X - m)
    eigval, eigvec = np.linalg.eig(df @ df.T)
    order = eigval.argsort()[::-1]
    return m[:, 0], eigvec[:, order].T @ P


def _np_cirtorch_pcawhitenlearn(X):
    N = X.shape[1]
    m = X.mean(axis=1, keepdims=True)
    Xc = X - m
    Xcov = Xc @ Xc.T
    Xcov = (Xcov + Xcov.T) / (2 * N)
    eigval, eigvec = np.linalg.eig(Xcov)
    order = eigval.argsort()[::-1]
    return m[:, 0], np.linalg.inv(np.sqrt(np.diag(eigval[order]))) @ eigvec[:, order].T


def _same_up_to_row_signs(a: np.ndarray, b: np.ndarray) -> bool:
    signs = np.sign((a * b).sum(axis=1, keepdims=True))
    return np.allclose(a, signs * b, rtol=1e-6, atol=1e-8)


def test_lw_whitens_matching_differences():
    x, pairs = _descriptors()
    w = learn_lw(x, pairs)
    P, m = w["projection"], w["mean"]
    diff = x[pairs[:, 0]] - x[pairs[:, 1]]
    c_s = diff.T @ diff / len(diff)
    assert torch.allclose(P @ c_s @ P.T, torch.eye(8, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(m, x[pairs[:, 0]].mean(0))
    # the rotation diagonalises the scatter, variances in decreasing order
    scatter = P @ (x - m).T @ (x - m) @ P.T
    diag = torch.diagonal(scatter)
    assert torch.allclose(scatter, torch.diag(diag), atol=1e-6 * float(diag.max()))
    assert torch.all(diag[:-1] >= diag[1:])


def test_lw_matches_cirtorch():
    x, pairs = _descriptors()
    m_ref, p_ref = _np_cirtorch_whitenlearn(x.numpy().T, pairs[:, 0].numpy(), pairs[:, 1].numpy())
    w = learn_lw(x, pairs)
    assert np.allclose(w["mean"].numpy(), m_ref)
    assert _same_up_to_row_signs(w["projection"].numpy(), np.real(p_ref))


def test_pca_whitening_identity_covariance_and_cirtorch():
    x, _ = _descriptors(seed=1)
    w = learn_pca(x)
    y = (x - w["mean"]) @ w["projection"].T
    assert torch.allclose(y.T @ y / len(y), torch.eye(8, dtype=torch.float64), atol=1e-8)
    m_ref, p_ref = _np_cirtorch_pcawhitenlearn(x.numpy().T)
    assert np.allclose(w["mean"].numpy(), m_ref)
    assert _same_up_to_row_signs(w["projection"].numpy(), np.real(p_ref))


def test_dimensionality_reduction_keeps_leading_rows():
    x, pairs = _descriptors()
    full, reduced = learn_lw(x, pairs), learn_lw(x, pairs, dim=3)
    assert reduced["projection"].shape == (3, 8)
    assert _same_up_to_row_signs(reduced["projection"].numpy(), full["projection"][:3].numpy())
    assert learn_pca(x, dim=5)["projection"].shape == (5, 8)
    with pytest.raises(ValueError):
        learn_pca(x, dim=9)


def test_apply_whitening_formula():
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    w = {
        "kind": "pca",
        "mean": torch.tensor([1.0, 1.0]),
        "projection": torch.tensor([[2.0, 0.0], [0.0, 3.0]]),
    }
    # (x - mean) = [[0, 1], [2, 0]] -> projected [[0, 3], [4, 0]] -> normalised
    assert torch.allclose(apply_whitening(x, w), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    y = torch.randn(5, 2)
    assert torch.allclose(apply_whitening(y, w), F.normalize((y - w["mean"]) @ w["projection"].T, dim=1))


def test_save_load_roundtrip_atomic_and_errors(tmp_path):
    x, pairs = _descriptors()
    w = learn_lw(x.float(), pairs, dim=4)
    path = whitening_path(tmp_path / "best-epoch=03.ckpt")
    assert path.name == "best-epoch=03.whitening.pt"
    save_whitening(path, w)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    loaded = load_whitening(path)
    assert loaded["kind"] == "lw" and torch.equal(loaded["projection"], w["projection"])
    with pytest.raises(CbirError, match="not found"):
        load_whitening(tmp_path / "missing.whitening.pt")
    bad = tmp_path / "bad.whitening.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CbirError, match=r"bad\.whitening\.pt is unreadable"):
        load_whitening(bad)
    torch.save({"kind": "lw", "mean": torch.zeros(3), "projection": torch.zeros(2, 4)}, bad)
    with pytest.raises(CbirError, match="is not a whitening"):
        load_whitening(bad)


class _Identity(torch.nn.Module):
    """A module whose embedding is its input flattened (to check fit_whitening end to end)."""

    post_whitening = None  # the model contract: no post-hoc whitening attached

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def embed(self, images):
        return images.flatten(1)


def test_fit_whitening_embeds_dataset_and_learns():
    x, pairs = _descriptors()
    data = TensorDataset(x.float(), torch.zeros(len(x)), torch.arange(len(x)))
    module = _Identity().train()
    w = fit_whitening(module, data, pairs, "lw", dim=6, batch_size=37)
    assert module.training  # mode restored
    ref = learn_lw(x.float(), pairs, dim=6)
    assert _same_up_to_row_signs(w["projection"].double().numpy(), ref["projection"].double().numpy())
    with pytest.raises(CbirError, match="needs matching pairs"):
        fit_whitening(module, data, torch.zeros(0, 2, dtype=torch.long), "lw")
    with pytest.raises(CbirError, match="unknown whitening kind"):
        fit_whitening(module, data, pairs, "zca")
