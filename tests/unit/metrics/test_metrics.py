"""Tests for cbir_lightning.metrics: hand-computed cases plus cross-checks against torchmetrics,
pytorch-metric-learning's AccuracyCalculator and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cbir_lightning.metrics import (
    average_precision,
    episode_scores,
    oneshot_accuracy,
    pairwise_similarity,
    ranked_relevance,
    retrieval_metrics,
)

# --------------------------------------------------------------------------------------------------
# helpers


def _scores_as_embeddings(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Query/database embeddings whose "dot" similarity is exactly ``scores`` [nq, nd]."""
    return torch.eye(scores.shape[0], dtype=torch.float64), scores.T.contiguous().double()


def _reference_metrics(scores, relevant, ks, exclude_self=False) -> dict[str, float]:
    """Slow pure-Python reference: stable sort on -score (ties -> lower index first)."""
    per_query: dict[str, list[float]] = {}
    for i, (row, rel_row) in enumerate(zip(scores.tolist(), relevant.tolist(), strict=True)):
        items = [
            (s, r) for j, (s, r) in enumerate(zip(row, rel_row, strict=True)) if not (exclude_self and j == i)
        ]
        ranked = [r for _, r in sorted(items, key=lambda item: -item[0])]
        num_pos = sum(ranked)
        if num_pos == 0:
            continue
        precisions = []  # precision at each relevant rank (1-based rank, value)
        hits = 0
        for rank, r in enumerate(ranked, start=1):
            if r:
                hits += 1
                precisions.append((rank, hits / rank))
        values = {
            "mAP": sum(p for _, p in precisions) / num_pos,
            "mAP@R": sum(p for rank, p in precisions if rank <= num_pos) / num_pos,
        }
        for k in ks:
            values[f"mAP@{k}"] = sum(p for rank, p in precisions if rank <= k) / min(k, num_pos)
            values[f"recall@{k}"] = float(any(ranked[:k]))
            values[f"precision@{k}"] = sum(ranked[:k]) / k
        for name, value in values.items():
            per_query.setdefault(name, []).append(value)
    out = {name: sum(v) / len(v) for name, v in per_query.items()}
    out["num_queries"] = float(len(per_query["mAP"]))
    return out


def _assert_close(actual: dict, expected: dict, tol: float = 1e-12) -> None:
    assert set(expected) <= set(actual), set(expected) - set(actual)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=tol), name


@pytest.fixture(scope="module")
def random_data():
    """200 queries x 500 database items, 16-d, 10 classes, plus one query whose class is absent."""
    g = torch.Generator().manual_seed(0)
    query = torch.randn(200, 16, generator=g, dtype=torch.float64)
    database = torch.randn(500, 16, generator=g, dtype=torch.float64)
    query_labels = torch.randint(0, 10, (200,), generator=g)
    database_labels = torch.randint(0, 10, (500,), generator=g)
    query_labels[3] = 99  # no relevant item -> must be skipped
    return query, database, query_labels, database_labels


def _cosine64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T


# --------------------------------------------------------------------------------------------------
# similarity


def test_pairwise_similarity_hand_values():
    q = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    db = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    expected = {
        "cosine": [[1.0, 0.0], [0.6, 0.8]],
        "dot": [[1.0, 0.0], [3.0, 8.0]],
        "l2": [[0.0, -math.sqrt(5.0)], [-math.sqrt(20.0), -math.sqrt(13.0)]],
        "l1": [[0.0, -3.0], [-6.0, -5.0]],
    }
    for name, values in expected.items():
        out = pairwise_similarity(q, db, name)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, torch.tensor(values), msg=name)
    chebyshev = pairwise_similarity(q, db, lambda a, b: -(a[:, None] - b[None]).abs().amax(-1))
    torch.testing.assert_close(chebyshev, torch.tensor([[0.0, -2.0], [-4.0, -3.0]]))


def test_pairwise_similarity_dtypes_and_errors():
    q64 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert pairwise_similarity(q64, q64.float(), "dot").dtype == torch.float64
    assert pairwise_similarity(torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), "dot").dtype == torch.float32
    assert pairwise_similarity(torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), "dot").item() == 11.0
    with pytest.raises(ValueError, match="cosine.*dot.*l2.*l1"):
        pairwise_similarity(q64, q64, "euclidean")
    with pytest.raises(ValueError, match="Expected query"):
        pairwise_similarity(q64, torch.ones(2, 3), "dot")
    with pytest.raises(ValueError, match="callable returned shape"):
        pairwise_similarity(q64, q64, lambda a, b: a.sum(1))


# --------------------------------------------------------------------------------------------------
# ranked_relevance / average_precision


def test_ranked_relevance_tie_rule():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    relevant = torch.tensor([[True, False, False, True, False]])
    # order: idx1 (0.9), idx3 (0.9), idx0 (0.5), idx2 (0.5), idx4 -> ties broken by lower index first
    assert ranked_relevance(scores, relevant).tolist() == [[False, True, True, False, False]]
    # all-tied long row: the ranking must be the database order itself (needs a stable sort)
    relevant = torch.rand(1, 5000, generator=torch.Generator().manual_seed(1)) < 0.3
    assert torch.equal(ranked_relevance(torch.zeros(1, 5000), relevant), relevant)


def test_average_precision_hand_values():
    ranked = torch.tensor(
        [
            [True, False, True, False, False],
            [False, True, True, False, True],
            [False, False, True, False, False],
            [False, False, False, False, False],
        ]
    )
    ap = average_precision(ranked)
    assert ap[0].item() == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ap[1].item() == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert ap[2].item() == pytest.approx(1 / 3)
    assert math.isnan(ap[3].item())
    # truncated ranking where one of 3 positives was not retrieved
    ap = average_precision(ranked[:1], num_positives=torch.tensor([3]))
    assert ap.item() == pytest.approx((1 / 1 + 2 / 3) / 3)


def test_average_precision_matches_sklearn(random_data):
    from sklearn.metrics import average_precision_score

    query, database, query_labels, database_labels = random_data
    scores = _cosine64(query[:8], database)
    relevant = query_labels[:8, None] == database_labels[None]
    ours = average_precision(ranked_relevance(scores, relevant))
    for i in range(8):
        if relevant[i].any():
            expected = average_precision_score(relevant[i].numpy(), scores[i].numpy())
            assert ours[i].item() == pytest.approx(expected, abs=1e-12)
        else:
            assert math.isnan(ours[i].item())


# --------------------------------------------------------------------------------------------------
# retrieval_metrics: hand-computed cases

HAND_SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.1, 0.7, 0.2],  # label 0 -> ranked [T, F, F, F, T], R=2
        [0.3, 0.2, 0.6, 0.1, 0.5],  # label 1 -> ranked [F, F, F, T, T], R=2
        [0.1, 0.2, 0.3, 0.4, 0.5],  # label 2 -> ranked [T, F, F, F, F], R=1
        [0.5, 0.4, 0.3, 0.2, 0.1],  # label 7 -> no positives, skipped
    ]
)
HAND_QUERY_LABELS = torch.tensor([0, 1, 2, 7])
HAND_DB_LABELS = torch.tensor([0, 1, 0, 1, 2])
HAND_EXPECTED = {
    # per-query AP: (1 + 2/5)/2 = 0.7, (1/4 + 2/5)/2 = 0.325, 1
    "mAP": (0.7 + 0.325 + 1.0) / 3,
    # top-R: [T, F] -> 1/2, [F, F] -> 0, [T] -> 1
    "mAP@R": (0.5 + 0.0 + 1.0) / 3,
    # AP@k divided by min(k, R)
    "mAP@1": (1 / 1 + 0.0 + 1 / 1) / 3,
    "mAP@3": (1 / 2 + 0.0 + 1 / 1) / 3,
    "mAP@4": (1 / 2 + (1 / 4) / 2 + 1 / 1) / 3,
    "mAP@10": (0.7 + 0.325 + 1.0) / 3,
    "recall@1": 2 / 3,
    "recall@3": 2 / 3,
    "recall@4": 1.0,
    "recall@10": 1.0,
    "precision@1": 2 / 3,
    "precision@3": (1 / 3 + 0 + 1 / 3) / 3,
    "precision@4": (1 / 4 + 1 / 4 + 1 / 4) / 3,
    "precision@10": (2 / 10 + 2 / 10 + 1 / 10) / 3,
    "num_queries": 3.0,
}


def test_retrieval_metrics_hand_values():
    q, db = _scores_as_embeddings(HAND_SCORES)
    out = retrieval_metrics(q, db, HAND_QUERY_LABELS, HAND_DB_LABELS, similarity="dot", ks=(1, 3, 4, 10))
    assert set(out) == set(HAND_EXPECTED)
    assert all(type(v) is float for v in out.values())
    _assert_close(out, HAND_EXPECTED)


def test_retrieval_metrics_accepts_numpy():
    q, db = _scores_as_embeddings(HAND_SCORES)
    out = retrieval_metrics(
        q.numpy(),
        db.numpy(),
        HAND_QUERY_LABELS.numpy(),
        HAND_DB_LABELS.numpy(),
        similarity="dot",
        ks=(1, 3, 4, 10),
    )
    _assert_close(out, HAND_EXPECTED)


def test_retrieval_metrics_tie_rule():
    query = torch.tensor([[1.0, 0.0]])
    duplicates = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # identical embeddings -> exact tie
    # the lower database index wins the tie: irrelevant item first -> AP = 1/2, recall@1 = 0
    out = retrieval_metrics(query, duplicates, torch.tensor([0]), torch.tensor([1, 0]), ks=(1,))
    _assert_close(out, {"mAP": 0.5, "recall@1": 0.0, "precision@1": 0.0, "mAP@1": 0.0, "mAP@R": 0.0})
    out = retrieval_metrics(query, duplicates, torch.tensor([0]), torch.tensor([0, 1]), ks=(1,))
    _assert_close(out, {"mAP": 1.0, "recall@1": 1.0, "precision@1": 1.0, "mAP@1": 1.0, "mAP@R": 1.0})


@pytest.mark.parametrize(
    ("similarity", "expected_ap"), [("cosine", 0.5), ("dot", 0.5), ("l2", 1.0), ("l1", 1.0)]
)
def test_retrieval_metrics_similarity_choice(similarity, expected_ap):
    # far-but-aligned irrelevant item vs near-but-rotated relevant item
    query = torch.tensor([[1.0, 0.0]])
    database = torch.tensor([[10.0, 0.0], [1.0, 1.0]])
    out = retrieval_metrics(query, database, [0], [1, 0], similarity=similarity, ks=(1,))
    assert out["mAP"] == pytest.approx(expected_ap)


SELF_SCORES = torch.tensor(
    [
        [9.0, 0.2, 0.5, 0.1, 0.0],  # label 0: without self -> [F, T, F, F], R=1
        [0.3, 9.0, 0.4, 0.9, 0.0],  # label 0: -> [F, F, T, F]
        [0.1, 0.2, 9.0, 0.8, 0.0],  # label 1: -> [T, F, F, F]
        [0.5, 0.6, 0.7, 9.0, 0.0],  # label 1: -> [T, F, F, F]
        [0.1, 0.2, 0.3, 0.4, 9.0],  # label 2: singleton -> no positive once self is removed
    ]
)
SELF_LABELS = torch.tensor([0, 0, 1, 1, 2])


@pytest.mark.parametrize("chunk_size", [1, 2, 1024])
def test_retrieval_metrics_exclude_self_hand_values(chunk_size):
    q, db = _scores_as_embeddings(SELF_SCORES)
    out = retrieval_metrics(
        q,
        db,
        SELF_LABELS,
        SELF_LABELS,
        similarity="dot",
        ks=(1, 2, 4, 5),
        exclude_self=True,
        chunk_size=chunk_size,
    )
    ap = (1 / 2 + 1 / 3 + 1 + 1) / 4
    expected = {
        "mAP": ap,
        "mAP@R": (0 + 0 + 1 + 1) / 4,
        "mAP@1": (0 + 0 + 1 + 1) / 4,
        "mAP@2": (1 / 2 + 0 + 1 + 1) / 4,
        "mAP@4": ap,
        "mAP@5": ap,
        "recall@1": 2 / 4,
        "recall@2": 3 / 4,
        "recall@4": 1.0,
        "recall@5": 1.0,
        "precision@1": 2 / 4,
        "precision@2": (1 / 2 + 0 + 1 / 2 + 1 / 2) / 4,
        "precision@4": 1 / 4,  # k = nd - 1: only the 4 other items, exactly one relevant each
        "precision@5": 1 / 5,  # k = nd: self must not fill the 5th slot
        "num_queries": 4.0,
    }
    _assert_close(out, expected)


def test_retrieval_metrics_validation():
    q, db = torch.randn(4, 3), torch.randn(5, 3)
    ql, dl = torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long)
    for args in [(q, db, ql, dl[:4]), (q, db[:, :2], ql, dl), (q[0], db, ql, dl), (q, db, ql[:, None], dl)]:
        with pytest.raises(ValueError, match="Expected query \\[nq, d\\], database \\[nd, d\\]"):
            retrieval_metrics(*args)
    with pytest.raises(ValueError, match="exclude_self"):
        retrieval_metrics(q, db, ql, dl, exclude_self=True)
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(q, db, ql, dl, ks=(0,))
    with pytest.raises(ValueError, match="cosine"):
        retrieval_metrics(q, db, ql, dl, similarity="hamming")


def test_retrieval_metrics_no_scored_queries_gives_nan():
    out = retrieval_metrics(torch.randn(2, 3), torch.randn(3, 3), [5, 6], [0, 1, 2], ks=(1,))
    assert out["num_queries"] == 0.0
    assert math.isnan(out["mAP"]) and math.isnan(out["recall@1"])


# --------------------------------------------------------------------------------------------------
# chunking and an independent reference implementation


@pytest.mark.parametrize("exclude_self", [False, True])
def test_chunk_size_invariance_with_ties(exclude_self):
    g = torch.Generator().manual_seed(2)
    database = torch.randint(-2, 3, (60, 4), generator=g).float()  # "dot" scores: small ints, many ties
    labels = torch.randint(0, 6, (60,), generator=g)
    query, query_labels = (database, labels) if exclude_self else (database[:25] + 1, labels[:25])
    ks = (1, 3, 59, 100)
    results = [
        retrieval_metrics(
            query,
            database,
            query_labels,
            labels,
            similarity="dot",
            ks=ks,
            exclude_self=exclude_self,
            chunk_size=c,
        )
        for c in (1, 7, 1024)
    ]
    assert results[0] == results[1] == results[2]
    relevant = query_labels[:, None] == labels[None]
    expected = _reference_metrics(query @ database.T, relevant, ks, exclude_self)
    _assert_close(results[0], expected)


def test_chunk_size_invariance_random(random_data):
    query, database, query_labels, database_labels = random_data
    results = [
        retrieval_metrics(query.float(), database.float(), query_labels, database_labels, chunk_size=c)
        for c in (1, 7, 1024)
    ]
    assert results[0] == results[1] == results[2]


def test_matches_reference_implementation(random_data):
    query, database, query_labels, database_labels = random_data
    ks = (1, 5, 10, 100)
    out = retrieval_metrics(query, database, query_labels, database_labels, ks=ks, chunk_size=64)
    relevant = query_labels[:, None] == database_labels[None]
    expected = _reference_metrics(_cosine64(query, database), relevant, ks)
    assert expected["num_queries"] == 199.0
    _assert_close(out, expected, tol=1e-10)


# --------------------------------------------------------------------------------------------------
# torchmetrics


def test_matches_torchmetrics(random_data):
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP, RetrievalPrecision

    query, database, query_labels, database_labels = random_data
    ks = (1, 5, 10)
    out = retrieval_metrics(query, database, query_labels, database_labels, ks=ks)
    # torchmetrics zeroes the relevance of items with preds <= 0, so shift cosine into (1, 3];
    # float64 makes the shift exact (order-preserving, no new ties).
    preds = (_cosine64(query, database) + 2.0).flatten()
    target = (query_labels[:, None] == database_labels[None]).flatten()
    indexes = torch.arange(len(query)).repeat_interleave(len(database))
    tm_map = RetrievalMAP(empty_target_action="skip")(preds, target, indexes=indexes)
    assert out["mAP"] == pytest.approx(tm_map.item(), abs=1e-6)
    for k in ks:
        hit = RetrievalHitRate(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
        prec = RetrievalPrecision(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
        assert out[f"recall@{k}"] == pytest.approx(hit.item(), abs=1e-6)
        assert out[f"precision@{k}"] == pytest.approx(prec.item(), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# pytorch-metric-learning


def _pml_accuracy(query, query_labels, database=None, database_labels=None) -> dict[str, float]:
    """AccuracyCalculator over the *whole* ranking (k=None) with exact cosine k-NN.

    Notes on apples-to-apples: with k=None the k-NN list covers the whole reference set (minus the
    query itself when reference is None), so "mean_average_precision" is standard AP; its finite-k
    variant would divide by R rather than min(k, R). The default knn_func is faiss IndexFlatL2 in
    float32; a torch cosine top-k avoids near-tie reorderings from faiss' rounding. Queries whose
    label has no other reference item ("lone" labels) are dropped, as in our skip rule.
    """
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    calculator = AccuracyCalculator(
        include=("mean_average_precision", "mean_average_precision_at_r", "precision_at_1"),
        k=None,
        avg_of_avgs=False,
        device=torch.device("cpu"),
        knn_func=CustomKNN(CosineSimilarity()),
    )
    return calculator.get_accuracy(query, query_labels, database, database_labels)


def test_matches_pytorch_metric_learning_separate_database(random_data):
    query, database, query_labels, database_labels = random_data
    query, database = query.float(), database.float()
    out = retrieval_metrics(query, database, query_labels, database_labels)
    pml = _pml_accuracy(query, query_labels, database, database_labels)
    assert out["mAP"] == pytest.approx(pml["mean_average_precision"], abs=1e-6)
    assert out["mAP@R"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert out["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)


def test_matches_pytorch_metric_learning_same_source(random_data):
    _, database, _, database_labels = random_data
    database, labels = database.float(), database_labels.clone()
    labels[7] = 123  # singleton class: a lone query for PML, no positive for us
    out = retrieval_metrics(database, database, labels, labels, exclude_self=True, chunk_size=100)
    pml = _pml_accuracy(database, labels)  # reference=None -> ref_includes_query=True
    assert out["num_queries"] == 499.0
    assert out["mAP"] == pytest.approx(pml["mean_average_precision"], abs=1e-6)
    assert out["mAP@R"] == pytest.approx(pml["mean_average_precision_at_r"], abs=1e-6)
    assert out["recall@1"] == pytest.approx(pml["precision_at_1"], abs=1e-6)


# --------------------------------------------------------------------------------------------------
# one-shot


def test_oneshot_accuracy_hand_values_and_ties():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.5, 0.2], [0.2, 0.1, 0.0]])
    # trial 0 correct; trial 1 ties 0/1 -> index 0 wins -> wrong; trial 2 predicts 0 -> wrong
    assert oneshot_accuracy(scores, torch.tensor([1, 1, 2])) == pytest.approx(1 / 3)
    assert oneshot_accuracy(scores, torch.tensor([1, 0, 0])) == pytest.approx(1.0)
    assert oneshot_accuracy(scores.numpy(), np.array([1, 0, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="targets"):
        oneshot_accuracy(scores, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="Expected scores"):
        oneshot_accuracy(scores, torch.tensor([0, 1]))


EPISODE_EMB = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [-1.0, 0.0]])
EPISODE_QUERIES = torch.tensor([0, 2])
EPISODE_CANDIDATES = torch.tensor([[1, 2, 3], [0, 1, 3]])


@pytest.mark.parametrize(
    ("similarity", "expected"),
    [
        ("cosine", [[0.0, 0.6, -1.0], [0.6, 0.8, -0.6]]),
        ("dot", [[0.0, 3.0, -1.0], [3.0, 8.0, -3.0]]),
        ("l2", [[-math.sqrt(5), -math.sqrt(20), -2.0], [-math.sqrt(20), -math.sqrt(13), -math.sqrt(32)]]),
        ("l1", [[-3.0, -6.0, -2.0], [-6.0, -5.0, -8.0]]),
        (lambda q, c: -(q[:, None] - c[None]).abs().amax(-1), [[-2.0, -4.0, -2.0], [-4.0, -3.0, -4.0]]),
    ],
)
def test_episode_scores_hand_values(similarity, expected):
    scores = episode_scores(EPISODE_EMB, EPISODE_QUERIES, EPISODE_CANDIDATES, similarity)
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_episode_scores_end_to_end_accuracy():
    targets = torch.tensor([1, 1])
    cosine = episode_scores(EPISODE_EMB, EPISODE_QUERIES, EPISODE_CANDIDATES, "cosine")
    l1 = episode_scores(EPISODE_EMB, EPISODE_QUERIES, EPISODE_CANDIDATES, "l1")
    assert oneshot_accuracy(cosine, targets) == 1.0
    assert oneshot_accuracy(l1, targets) == 0.5  # trial 0 picks candidate 2 under L1
    with pytest.raises(ValueError, match="cosine"):
        episode_scores(EPISODE_EMB, EPISODE_QUERIES, EPISODE_CANDIDATES, "manhattan")


# --------------------------------------------------------------------------------------------------
# the ranking engine: ranks of positives by counting, junk, ties, NaN


def _reference_ranks(scores, positives, junk) -> list[list[int]]:
    """Slow reference: sort (score desc, index asc; NaN last) without the junk, read off positive ranks."""
    out = []
    for row, pos, bad in zip(scores.tolist(), positives, junk, strict=True):
        items = [(j, s) for j, s in enumerate(row) if j not in set(bad)]
        items.sort(
            key=lambda item: (math.isnan(item[1]), -item[1] if not math.isnan(item[1]) else 0, item[0])
        )
        out.append(sorted(rank for rank, (j, _) in enumerate(items, start=1) if j in set(pos)))
    return out


def _padded(lists, width=None) -> torch.Tensor:
    width = max([len(x) for x in lists] + [0]) if width is None else width
    return torch.tensor([list(x) + [-1] * (width - len(x)) for x in lists], dtype=torch.long).view(
        len(lists), width
    )


RANK_CASES = ["ints", "gauss", "nan", "zeros", "constant", "half", "int64", "huge", "tiny"]


@pytest.mark.parametrize("kind", RANK_CASES)
def test_positive_ranks_match_sorting_reference(kind):
    from cbir_lightning.metrics.ranking import positive_ranks

    g = torch.Generator().manual_seed(RANK_CASES.index(kind))
    for _ in range(40):
        c, n = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        if kind == "ints":  # many exact ties
            scores = torch.randint(-3, 4, (c, n), generator=g).float()
        elif kind == "gauss":
            scores = torch.randn(c, n, generator=g, dtype=torch.float64)
        elif kind == "nan":
            scores = torch.randn(c, n, generator=g)
            scores[scores > 0.8] = math.nan
            scores[scores < -1.5] = -math.inf
        elif kind == "zeros":  # -0.0 and +0.0 are equal scores
            scores = torch.randint(0, 2, (c, n), generator=g).float() * torch.tensor(-0.0)
            scores[:, ::3] = 0.0
        elif kind == "constant":
            scores = torch.full((c, n), 0.5)
        elif kind == "half":
            scores = torch.randn(c, n, generator=g).half()
        elif kind == "int64":  # beyond float32's integers
            scores = torch.randint(-3, 4, (c, n), generator=g) * 2**40 + torch.randint(
                0, 2, (c, n), generator=g
            )
        elif kind == "huge":  # the score range overflows float32
            scores = torch.randn(c, n, generator=g).sign() * 3e38
        else:  # a range so small that the bin scale overflows
            scores = torch.randint(0, 3, (c, n), generator=g).float() * 1e-45
        positives, junk = [], []
        for _ in range(c):
            perm = torch.randperm(n, generator=g).tolist()
            p, j = (
                int(torch.randint(0, n + 1, (1,), generator=g)),
                int(torch.randint(0, n + 1, (1,), generator=g)),
            )
            positives.append(perm[:p])
            junk.append(perm[p : p + j])
        ranks = positive_ranks(scores, _padded(positives), _padded(junk))
        expected = _reference_ranks(scores, positives, junk)
        for row, exp in zip(ranks.tolist(), expected, strict=True):
            assert [int(r) for r in row if math.isfinite(r)] == exp
            assert all(math.isinf(r) for r in row[len(exp) :])


def test_positive_ranks_large_rows_and_blocks(monkeypatch):
    """Rows longer than a block and several blocks (the threaded path) give the reference ranks."""
    from cbir_lightning.metrics import ranking

    g = torch.Generator().manual_seed(5)
    scores = torch.randn(37, 3000, generator=g).round(decimals=2)  # ties
    positives = [
        torch.randperm(3000, generator=g)[: int(k)].tolist()
        for k in torch.randint(0, 200, (37,), generator=g)
    ]
    monkeypatch.setattr(ranking, "BLOCK_ELEMENTS", 3000 * 4)  # 10 blocks of <= 4 rows
    ranks = ranking.positive_ranks(scores, _padded(positives), workers=2)
    expected = _reference_ranks(scores, positives, [[]] * 37)
    assert [[int(r) for r in row if math.isfinite(r)] for row in ranks.tolist()] == expected


# --------------------------------------------------------------------------------------------------
# relevance as positive / junk lists; trapezoid AP and mP@k

# One query, 8 database items scored 8..1 (item 0 first). Positives {1, 4, 6}, junk {0, 3}: junk is
# before and between the positives. Without junk the ranking is items 1 2 4 5 6 7 -> positives at 1, 3, 5.
LIST_SCORES = torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])


def _list_metrics(positives, junk, **kwargs):
    q, db = _scores_as_embeddings(LIST_SCORES)
    return retrieval_metrics(q, db, positives=positives, junk=junk, similarity="dot", **kwargs)


def test_list_relevance_hand_values():
    out = _list_metrics([[1, 4, 6]], [[0, 3]], ks=(1, 2, 4, 10), mp_at_k=True)
    expected = {
        "mAP": (1 / 1 + 2 / 3 + 3 / 5) / 3,
        "mAP@R": (1 / 1 + 2 / 3) / 3,
        "mAP@1": 1.0,
        "mAP@2": (1 / 1) / 2,
        "mAP@4": (1 / 1 + 2 / 3) / 3,
        "mAP@10": (1 / 1 + 2 / 3 + 3 / 5) / 3,
        "recall@1": 1.0,
        "recall@2": 1.0,
        "precision@1": 1.0,
        "precision@2": 1 / 2,
        "precision@4": 2 / 4,
        "precision@10": 3 / 10,
        # revisitop pr@k: k' = min(k, last positive rank = 5)
        "mP@1": 1.0,
        "mP@2": 1 / 2,
        "mP@4": 2 / 4,
        "mP@10": 3 / 5,
        "num_queries": 1.0,
    }
    _assert_close(out, expected)
    # the junk really is out of the ranking: without it, positives sit at ranks 2, 5, 7
    out = _list_metrics([[1, 4, 6]], None, ks=(1,))
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 5 + 3 / 7) / 3)


def test_trapezoid_ap_hand_values():
    # ranks 1, 3, 5 of R = 3: sum over positives of (precision before + precision at) / 2, / R
    # rank 1: (1 + 1)/2; rank 3: (1/2 + 2/3)/2; rank 5: (2/4 + 3/5)/2
    expected = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 4 + 3 / 5) / 2) / 3
    out = _list_metrics([[1, 4, 6]], [[0, 3]], ks=(1,), ap_rule="trapezoid")
    assert out["mAP"] == pytest.approx(expected, abs=1e-15)
    # the trapezoid rule and the step rule agree on a perfect ranking
    perfect = _list_metrics([[0, 1, 2]], [[]], ks=(1,), ap_rule="trapezoid", mp_at_k=True)
    assert perfect["mAP"] == 1.0 and perfect["mP@1"] == 1.0


def test_list_relevance_queries_without_positives_are_skipped():
    q, db = _scores_as_embeddings(torch.cat([LIST_SCORES, LIST_SCORES.flip(1)]))
    # query 0: positive 7 is last; query 1 has only junk -> skipped, even though it lists "positives"
    out = retrieval_metrics(q, db, positives=[[7], [2]], junk=[[], [2, 3]], similarity="dot", ks=(1,))
    assert out["num_queries"] == 1.0
    assert out["mAP"] == pytest.approx(1 / 8)
    none = retrieval_metrics(q, db, positives=[[], []], junk=None, similarity="dot", ks=(1,))
    assert none["num_queries"] == 0.0 and math.isnan(none["mAP"])


def test_list_relevance_matches_labels_and_exclude_self(random_data):
    query, database, query_labels, database_labels = random_data
    positives = [(database_labels == label).nonzero().squeeze(1).tolist() for label in query_labels]
    from_lists = retrieval_metrics(query, database, positives=positives, ks=(1, 7))
    from_labels = retrieval_metrics(query, database, query_labels, database_labels, ks=(1, 7))
    assert from_lists == from_labels
    self_pos = [(database_labels == label).nonzero().squeeze(1).tolist() for label in database_labels]
    lists = retrieval_metrics(database, database, positives=self_pos, exclude_self=True, ks=(3,))
    labels = retrieval_metrics(
        database, database, database_labels, database_labels, exclude_self=True, ks=(3,)
    )
    assert lists == labels


def test_list_relevance_errors():
    q, db = _scores_as_embeddings(LIST_SCORES)
    with pytest.raises(ValueError, match=r"positives\[0\] holds index 8"):
        retrieval_metrics(q, db, positives=[[8]], similarity="dot")
    with pytest.raises(ValueError, match="either"):
        retrieval_metrics(q, db, [0], [0] * 8, positives=[[1]], similarity="dot")
    with pytest.raises(ValueError, match="positives lists"):
        retrieval_metrics(q, db, positives=[[1], [2]], similarity="dot")


def test_per_query_metrics_and_ranks():
    from cbir_lightning.metrics import per_query_metrics

    q, db = _scores_as_embeddings(HAND_SCORES)
    out = per_query_metrics(q, db, HAND_QUERY_LABELS, HAND_DB_LABELS, similarity="dot", return_ranks=True)
    assert [r.tolist() for r in out["ranks"]] == [[1, 5], [4, 5], [1], []]
    assert out["AP"][:3].tolist() == pytest.approx([0.7, 0.325, 1.0])
    assert math.isnan(out["AP"][3].item())
    assert out["num_positives"].tolist() == [2, 2, 1, 0]


@pytest.mark.parametrize("exclude_self", [False, True])
def test_chunk_size_invariance_lists_and_all_metrics(exclude_self):
    g = torch.Generator().manual_seed(3)
    database = torch.randint(-2, 3, (70, 5), generator=g).float()  # ties
    query = database if exclude_self else torch.randint(-2, 3, (33, 5), generator=g).float()
    positives = [
        torch.randperm(70, generator=g)[: int(k)].tolist()
        for k in torch.randint(0, 15, (len(query),), generator=g)
    ]
    junk = [
        torch.randperm(70, generator=g)[: int(k)].tolist()
        for k in torch.randint(0, 10, (len(query),), generator=g)
    ]
    results = [
        retrieval_metrics(
            query,
            database,
            positives=positives,
            junk=junk,
            similarity="dot",
            ks=(1, 4, 100),
            exclude_self=exclude_self,
            chunk_size=c,
            mp_at_k=True,
            ap_rule=rule,
        )
        for rule in ("step", "trapezoid")
        for c in (1, 5, 64, None)
    ]
    assert all(r == results[0] for r in results[:4]) and all(r == results[4] for r in results[4:])
    assert results[0]["mAP"] != results[4]["mAP"]  # the two AP rules differ here


def test_default_chunk_bounds_memory(monkeypatch):
    """The default chunk keeps chunk x database under CHUNK_ELEMENTS (but at least MIN_CHUNK queries)."""
    from cbir_lightning.metrics import ranking, retrieval

    seen = []
    original = ranking.positive_ranks

    def spy(scores, *args, **kwargs):
        seen.append(tuple(scores.shape))
        return original(scores, *args, **kwargs)

    monkeypatch.setattr(retrieval, "positive_ranks", spy)
    monkeypatch.setattr(retrieval, "CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr(retrieval, "MIN_CHUNK", 2)
    query, database = torch.randn(9, 4), torch.randn(200, 4)
    retrieval_metrics(query, database, torch.zeros(9, dtype=torch.long), torch.zeros(200, dtype=torch.long))
    assert sorted(seen) == [(4, 200), (5, 200)]  # chunks may run on parallel threads


def test_workers_keep_inference_mode_and_thread_count():
    """Chunks run on worker threads: they must see the caller's inference mode (as under Lightning's
    validation) and leave torch's thread count as it was."""
    head = torch.nn.Linear(4, 4)
    with torch.no_grad():
        head.weight.copy_(torch.randint(-2, 3, (4, 4)).float())
        head.bias.zero_()

    def similarity(q, d):  # a learned head, as SiameseModule.similarity: parameters require grad
        return head(q) @ d.T

    g = torch.Generator().manual_seed(4)
    embeddings = torch.randint(-3, 4, (60, 4), generator=g).float()
    labels = torch.randint(0, 4, (60,), generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            inside = retrieval_metrics(
                embeddings.clone(),
                embeddings.clone(),
                labels,
                labels,
                similarity=similarity,
                exclude_self=True,
                chunk_size=7,
            )
        assert torch.get_num_threads() == 2
        outside = retrieval_metrics(
            embeddings, embeddings, labels, labels, similarity=similarity, exclude_self=True, chunk_size=60
        )
    finally:
        torch.set_num_threads(threads)
    assert inside == outside
    relevant = labels[:, None] == labels[None]
    _assert_close(
        inside, _reference_metrics(similarity(embeddings, embeddings).detach(), relevant, (1, 5, 10), True)
    )
