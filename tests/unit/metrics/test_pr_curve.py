"""``precision_recall_curve`` against scikit-learn's per-query ``precision_recall_curve`` and
``average_precision_score`` and a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from sklearn.metrics import precision_recall_curve as sklearn_pr_curve

from cbir_lightning.metrics import per_query_metrics, precision_recall_curve, retrieval_metrics


def _random_queries(seed: int, nq: int = 7, nd: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Distinct scores ``[nq, nd]`` and relevance with at least one positive per query."""
    rng = np.random.default_rng(seed)
    scores = rng.permutation(nq * nd).reshape(nq, nd).astype(np.float64) / (nq * nd)
    relevant = rng.random((nq, nd)) < rng.uniform(0.05, 0.5)
    relevant[np.arange(nq), rng.integers(0, nd, nq)] = True
    return scores, relevant


def _ranks(scores: np.ndarray, relevant: np.ndarray) -> list[torch.Tensor]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return [torch.from_numpy(np.flatnonzero(rel[o]) + 1) for o, rel in zip(order, relevant, strict=True)]


def _sklearn_interpolated(scores, relevant, levels) -> np.ndarray:
    """Per query: max precision over sklearn's curve points with recall >= t (its appended
    (recall 0, precision 1) end point left out: it is no rank of the ranking); mean over queries."""
    curves = []
    for row, rel in zip(scores, relevant, strict=True):
        precision, recall, _ = sklearn_pr_curve(rel, row)
        precision, recall = precision[:-1], recall[:-1]
        curves.append(
            [precision[recall >= t - 1e-12].max() if (recall >= t - 1e-12).any() else 0.0 for t in levels]
        )
    return np.mean(curves, axis=0)


@pytest.mark.parametrize("seed", range(5))
def test_interpolated_curve_matches_sklearn(seed):
    scores, relevant = _random_queries(seed)
    levels, precision = precision_recall_curve(_ranks(scores, relevant), 21)
    np.testing.assert_allclose(precision.numpy(), _sklearn_interpolated(scores, relevant, levels.numpy()))
    assert torch.all(precision[:-1] >= precision[1:])  # interpolation makes it non-increasing


@pytest.mark.parametrize("seed", range(5))
def test_non_interpolated_mean_at_own_recall_points_is_sklearn_average_precision(seed):
    scores, relevant = _random_queries(seed)
    for row, rel, ranks in zip(scores, relevant, _ranks(scores, relevant), strict=True):
        levels = torch.arange(1, len(ranks) + 1, dtype=torch.float64) / len(ranks)
        _, precision = precision_recall_curve([ranks], levels, interpolated=False)
        assert precision.mean().item() == pytest.approx(average_precision_score(rel, row))


def test_ranks_from_the_metric_engine_give_its_map():
    """Equal class sizes (same R per query): the non-interpolated curve at i/R averages to mAP."""
    gen = torch.Generator().manual_seed(0)
    query, database = torch.randn(12, 8, generator=gen), torch.randn(30, 8, generator=gen)
    qlabels, dlabels = torch.arange(12) % 3, torch.arange(30) % 3  # 10 positives each
    ranks = per_query_metrics(query, database, qlabels, dlabels, return_ranks=True)["ranks"]
    _, precision = precision_recall_curve(ranks, torch.arange(1, 11) / 10, interpolated=False)
    expected = retrieval_metrics(query, database, qlabels, dlabels)["mAP"]
    assert precision.mean().item() == pytest.approx(expected)


def test_hand_computed_case():
    # query 1: positives at ranks 2, 3 -> P = 1/2, 2/3; query 2: one positive at rank 1 -> P = 1
    levels, precision = precision_recall_curve([torch.tensor([2, 3]), torch.tensor([1])], [0.0, 0.5, 1.0])
    assert levels.tolist() == [0.0, 0.5, 1.0]
    assert precision.tolist() == pytest.approx([(2 / 3 + 1) / 2, (2 / 3 + 1) / 2, (2 / 3 + 1) / 2])
    _, raw = precision_recall_curve([torch.tensor([2, 3]), torch.tensor([1])], [0.0, 0.5, 1.0], False)
    assert raw.tolist() == pytest.approx([(1 / 2 + 1) / 2, (1 / 2 + 1) / 2, (2 / 3 + 1) / 2])


def test_queries_without_positives_are_skipped_and_none_gives_nan():
    _, with_empty = precision_recall_curve([torch.tensor([1, 4]), torch.tensor([], dtype=torch.long)], 5)
    _, alone = precision_recall_curve([torch.tensor([1, 4])], 5)
    assert torch.equal(with_empty, alone)
    assert torch.isnan(precision_recall_curve([], 3)[1]).all()
