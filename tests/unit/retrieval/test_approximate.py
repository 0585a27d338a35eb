"""``tune_approximate``: an HNSW / IVF index whose search parameter reaches the requested recall@10 on new
queries, recorded, repeatable; exact below the size threshold or when no parameter reaches the target."""

from __future__ import annotations

import faiss
import pytest
import torch
import torch.nn.functional as F

from cbir_lightning.retrieval import approximate, knn_index, knn_recall
from cbir_lightning.retrieval.approximate import FaissKnn, choose_kind, set_params, tune_approximate


def clustered(n: int, seed: int, d: int = 32, classes: int = 50) -> torch.Tensor:
    """Unit vectors around ``classes`` centres (as benchmarks/knn.py makes them); the centres are fixed."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(0)) / d**0.5
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return F.normalize(centres[labels] + 1.5 / d**0.5 * torch.randn(n, d, generator=g), dim=1)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return clustered(4000, seed=1), clustered(300, seed=2)  # database, new queries


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_new_queries_reach_the_target_recall(data, kind):
    database, queries = data
    tuned = tune_approximate(database, "dot", 0.95, kind=kind, sample=400)
    assert tuned.kind == tuned.knn.kind == kind and tuned.knn.index.ntotal == len(database)
    name = "ef_search" if kind == "hnsw" else "nprobe"
    ladder = [p[name] for p in approximate.ladder(tuned.knn)]
    assert list(tuned.params) == [name] and tuned.params[name] in ladder
    assert tuned.recall - 2 * tuned.error >= 0.95 and tuned.sample == 400
    _, exact = knn_index(database, "dot").search(queries, 10)
    _, found = tuned.knn.search(queries, 10, rescore=False)
    # measured on rows held out of the index: a new query's recall is as good (rows left in an HNSW
    # graph would find themselves and their linked neighbours: a far too small ef_search)
    assert knn_recall(found, exact) >= 0.945
    if tuned.params[name] != ladder[0]:  # the parameter is the cheapest enough: one step less is not
        cheaper = {name: ladder[ladder.index(tuned.params[name]) - 1]}
        set_params(tuned.knn, cheaper)
        _, fewer = tuned.knn.search(queries, 10, rescore=False)
        assert knn_recall(fewer, exact) < knn_recall(found, exact)
    described = tuned.describe()
    assert described["kind"] == kind and described["params"] == tuned.params
    assert (
        described["recall@10"] == pytest.approx(tuned.recall, abs=1e-5) and described["target_recall"] == 0.95
    )


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_tuning_is_repeatable(data, kind):
    database, queries = data
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # faiss inserts into an HNSW graph in a thread-scheduling order
    try:
        first, second = (tune_approximate(database, "dot", 0.9, kind=kind, sample=300) for _ in range(2))
    finally:
        faiss.omp_set_num_threads(threads)
    assert first.describe() == second.describe()
    assert torch.equal(first.knn.search(queries, 10)[1], second.knn.search(queries, 10)[1])
    other = tune_approximate(database, "dot", 0.9, kind=kind, sample=300, seed=1)
    assert other.sample == 300 and other.recall != first.recall  # another held-out sample


def test_exact_below_the_size_threshold_or_when_the_target_is_out_of_reach(data, monkeypatch):
    database, _ = data
    assert [choose_kind(n) for n in (9_999, 10_000, 999_999, 1_000_000)] == ["flat", "hnsw", "hnsw", "ivf"]
    small = tune_approximate(database, "dot")  # 4000 < MIN_SIZE
    assert small.kind == "flat" and small.knn.exact and "fewer than 10000: exact search" in small.reason
    assert small.describe()["reason"] == small.reason
    monkeypatch.setattr(approximate, "EF_SEARCH", (1,))
    hopeless = tune_approximate(database, "dot", 0.999, kind="hnsw", sample=200)
    assert hopeless.kind == "flat" and hopeless.knn.exact and "< 0.999 at {'ef_search': 1}" in hopeless.reason
    with pytest.raises(ValueError, match="target recall must lie in"):
        tune_approximate(database, "dot", 1.5)
    assert isinstance(small.knn, FaissKnn)
