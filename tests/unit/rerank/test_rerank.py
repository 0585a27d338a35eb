"""Re-ranking against hand-computed cases and direct transcriptions of the reference formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cbir_lightning.errors import CbirError
from cbir_lightning.rerank import (
    alpha_query_expansion,
    database_side_augmentation,
    diffusion_scores,
    mutual_knn_affinity,
    rerank_scores,
)

X = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)


def unit(v):
    v = torch.tensor(v, dtype=torch.float64)
    return v / v.norm()


def test_alpha_query_expansion_by_hand():
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # scores 1, 0.6, 0: top-2 are x1 (weight 1^3) and x2 (weight 0.6^3 = 0.216); the query has weight 1
    expected = unit([1 + 1 + 0.216 * 0.6, 0.216 * 0.8])
    assert torch.allclose(alpha_query_expansion(q, X, neighbours=2, alpha=3.0)[0], expected)


def test_alpha_zero_is_average_query_expansion():
    q = unit([0.3, 1.0])[None]
    top = (q @ X.T).topk(2).indices[0]
    expected = F.normalize((q[0] + X[top].sum(0))[None], dim=1)
    assert torch.allclose(alpha_query_expansion(q, X, neighbours=2, alpha=0.0), expected)


def test_negative_scores_get_no_weight():
    q = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)  # scores -1, -0.6, 0 -> weights 0
    assert torch.allclose(alpha_query_expansion(q, X, neighbours=3, alpha=3.0), q)


def test_database_side_augmentation_by_hand():
    out = database_side_augmentation(X, neighbours=2, alpha=3.0)
    # x3 = (0, 1): other items by score: x2 (0.8 -> 0.512), x1 (0 -> 0)
    assert torch.allclose(out[2], unit([0.512 * 0.6, 1 + 0.512 * 0.8]))
    # x1 = (1, 0): x2 (0.6 -> 0.216), x3 (0)
    assert torch.allclose(out[0], unit([1 + 0.216 * 0.6, 0.216 * 0.8]))
    # x2: x1 (0.6) and x3 (0.8) both
    assert torch.allclose(out[1], unit([0.6 + 0.216, 0.8 + 0.512]))


def reference_affinity(x: np.ndarray, k: int, gamma: float) -> np.ndarray:
    """Line-by-line transcription of knngraph.m (Iscen et al.'s code): knn lists include the item itself."""
    sims = x @ x.T
    n = len(x)
    knn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    a = np.zeros((n, n))
    for i in range(n):
        for j in knn[i]:
            if i in knn[j]:
                a[i, j] = max(sims[i, j], 0) ** gamma
    np.fill_diagonal(a, 0)
    return a


def test_mutual_knn_affinity_matches_reference():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(30, 5, generator=g, dtype=torch.float64), dim=1)
    got = mutual_knn_affinity(x, k=6, gamma=3.0, chunk=7).toarray()
    assert np.allclose(got, reference_affinity(x.numpy(), 6, 3.0))
    assert np.allclose(got, got.T) and (got > 0).sum() > 0


def test_diffusion_two_nodes_closed_form():
    # two items, each the other's neighbour: S = [[0, 1], [1, 0]], f = (I - a S)^-1 y
    x = torch.stack([unit([1.0, 0.0]), unit([0.8, 0.6])])
    q = unit([1.0, 0.1])[None]
    s = q @ x.T
    alpha, gamma = 0.5, 3.0
    y = s[0].clamp(min=0) ** gamma
    expected = torch.tensor([y[0] + alpha * y[1], alpha * y[0] + y[1]]) / (1 - alpha**2)
    f = diffusion_scores(s, mutual_knn_affinity(x, k=2, gamma=gamma), alpha=alpha, kq=2, gamma=gamma)
    assert torch.allclose(f[0], expected.double(), rtol=1e-5)


def test_diffusion_kq_keeps_only_the_best_scores():
    x = torch.stack([unit([1.0, 0.0]), unit([0.0, 1.0])])  # orthogonal: no edges, S = 0, f = y
    s = torch.tensor([[0.9, 0.5]], dtype=torch.float64)
    f = diffusion_scores(s, mutual_knn_affinity(x, k=2), alpha=0.9, kq=1, gamma=3.0)
    assert torch.allclose(f, torch.tensor([[0.9**3, 0.0]], dtype=torch.float64))


def test_diffusion_follows_the_manifold():
    # points on an arc from angle 0 to 90 degrees, plus one "distractor" off the arc
    angles = np.linspace(0, math.pi / 2, 12)
    arc = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], 1)
    distractor = np.array([[0.55, 0.0, 0.835]])  # dot with the query ~0.55, isolated
    x = F.normalize(torch.from_numpy(np.concatenate([arc, distractor])), dim=1)
    q = x[:1].clone()
    plain = rerank_scores("none", q, x)[0]
    diffused = rerank_scores("diffusion", q, x, graph_k=3, kq=2)[0]
    far = 8  # arc point at 60 degrees: dot 0.5 < distractor's 0.55
    assert plain[far] < plain[12]
    assert diffused[far] > diffused[12]


def test_rerank_none_is_dot_and_unknown_name_is_refused():
    q = unit([0.2, 1.0])[None]
    assert torch.allclose(rerank_scores("none", q, X), q @ X.T)
    assert torch.allclose(rerank_scores("dba", q, X), q @ database_side_augmentation(X).T)
    with pytest.raises(CbirError, match="--rerank must be one of"):
        rerank_scores("magic", q, X)


def test_evaluate_rerank_on_real_gnd_matches_revisitop_reference(tmp_path, capsys):
    from helpers.paths import SHARED_DATA
    from helpers.revisitop import revisited_reference

    from cbir_lightning.cli import main
    from data_modules.landmarks.gnd import load_gnd

    gnd = SHARED_DATA / "landmarks" / "gnd" / "gnd_roxford5k.pkl"
    if not gnd.is_file():
        pytest.skip(f"{gnd} not found")
    truth = load_gnd(gnd)
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(len(truth.imlist), 16, generator=g), dim=1)
    q = F.normalize(
        x[torch.arange(truth.num_queries) * 7] + 0.3 * torch.randn(truth.num_queries, 16, generator=g)
    )
    np.save(tmp_path / "q.npy", q.float().numpy())
    np.save(tmp_path / "x.npy", x.float().numpy())
    q64, x64 = (
        torch.from_numpy(np.load(tmp_path / "q.npy")).double(),
        torch.from_numpy(np.load(tmp_path / "x.npy")).double(),
    )
    expected = {
        "none": revisited_reference(q64.numpy(), x64.numpy(), truth.gnd),
        "aqe": revisited_reference(alpha_query_expansion(q64, x64).numpy(), x64.numpy(), truth.gnd),
        "dba": revisited_reference(q64.numpy(), database_side_augmentation(x64).numpy(), truth.gnd),
    }
    for name, reference in expected.items():
        try:
            main(
                [
                    "evaluate",
                    "--queries",
                    str(tmp_path / "q.npy"),
                    "--database",
                    str(tmp_path / "x.npy"),
                    "--gnd",
                    str(gnd),
                    "--rerank",
                    name,
                ]
            )
        except SystemExit as exit_:
            pytest.fail(f"evaluate exited {exit_.code}: {capsys.readouterr().err}")
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        for protocol in ("easy", "medium", "hard"):
            assert got[protocol]["mAP"] == pytest.approx(reference[protocol]["mAP"], abs=1e-9), (
                name,
                protocol,
            )
            assert got[protocol]["mP@5"] == pytest.approx(reference[protocol]["mP@5"], abs=1e-9)
    assert (
        expected["aqe"]["medium"]["mAP"] != expected["none"]["medium"]["mAP"]
    )  # re-ranking changed something


def test_diffusion_unreached_items_keep_plain_scores_clamped_or_not():
    """Items the diffusion does not reach are ordered by their plain dot products: clipped to [-1, 1]
    (``evaluate``, normalised descriptors) or as they are (``clamp=False``: the search's shortlist)."""
    x = torch.tensor([[2.0, 0.0], [1.5, 0.1], [1.2, 3.0], [1.3, 2.5]], dtype=torch.float64)
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    plain = q @ x.T
    for clamp in (True, False):
        scores = rerank_scores("diffusion", q, x, graph_k=2, kq=1, clamp=clamp)[0]
        unreached = scores <= 2.0
        assert unreached.tolist() == [False, False, True, True]  # plain scores 1.2, 1.3 > 1
        want = plain[0].clamp(-1, 1) if clamp else plain[0]
        assert torch.equal(scores[unreached], want[unreached])
