"""k-NN backends: exact torch and faiss flat give identical rankings (also with exact ties), equal to a
brute-force sort; the approximate faiss indexes report their recall; faiss is imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cbir_lightning.retrieval import knn, knn_index, knn_recall

METRICS = ["cosine", "dot", "l2"]


def _brute_force(query, database, k, metric):
    """Reference: float64 scores of all pairs, stable sort (ties: lower index first)."""
    q, x = query.double(), database.double()
    if metric == "cosine":
        q = torch.nn.functional.normalize(query.float(), dim=1).double()
        x = torch.nn.functional.normalize(database.float(), dim=1).double()
    scores = -(torch.cdist(q, x) ** 2) if metric == "l2" else q @ x.T
    return torch.sort(-scores, dim=1, stable=True).indices[:, :k]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(20, 16, generator=g)
    labels = torch.randint(0, 20, (2000,), generator=g)
    database = centers[labels] + 0.5 * torch.randn(2000, 16, generator=g)
    database[100:120] = database[7]  # exact duplicates: ties at any cut-off
    query = torch.randn(150, 16, generator=g)
    query[:10] = database[7]
    return query, database


@pytest.mark.parametrize("metric", METRICS)
def test_exact_backends_identical_and_correct(data, metric):
    pytest.importorskip("faiss")
    query, database = data
    scores_t, idx_t = knn(query, database, 15, metric, "torch")
    scores_f, idx_f = knn(query, database, 15, metric, "faiss")
    assert torch.equal(idx_t, idx_f)
    assert torch.equal(scores_t, scores_f)
    expected = _brute_force(query, database, 15, metric)
    agree = (idx_t == expected).all(1).double().mean().item()
    assert agree > 0.99  # brute force rounds differently: at most a rare near-tie may swap
    assert torch.equal(idx_t[:10], expected[:10])  # the duplicate block: ties by lower index
    if metric != "dot":  # (a longer vector may beat the query's own duplicate under the dot product)
        assert idx_t[0, :5].tolist() == [7, 100, 101, 102, 103]
    assert (scores_t[:, :-1] >= scores_t[:, 1:]).all()


def test_all_tied_database_falls_back_to_the_whole_database():
    database = torch.ones(300, 8)
    scores, idx = knn(torch.ones(3, 8), database, 5, "dot", "torch")
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 3
    assert scores.unique().tolist() == [8.0]


def test_torch_backend_chunking_does_not_change_results(data):
    query, database = data
    full = knn_index(database, "cosine", "torch", chunk_size=1000).search(query, 7)
    small = knn_index(database, "cosine", "torch", chunk_size=3).search(query, 7)
    assert torch.equal(full[1], small[1]) and torch.equal(full[0], small[0])


@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_backends_report_recall(data, backend):
    pytest.importorskip("faiss")
    query, database = data
    exact = knn(query, database, 10, "cosine", "torch")[1]
    approx = knn(query, database, 10, "cosine", backend)[1]
    recall = knn_recall(approx, exact)
    assert 0.5 < recall <= 1.0
    exhaustive = {"faiss-ivf": {"nlist": 8, "nprobe": 8}, "faiss-hnsw": {"ef_search": 2000}}[backend]
    wide = knn(query[10:], database, 10, "cosine", backend, **exhaustive)[1]  # (no tied duplicates)
    assert knn_recall(wide, exact[10:]) > 0.99


def test_knn_recall_hand_values():
    exact = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = torch.tensor([[4, 3, 9, 9], [5, 6, 7, 8]])
    assert knn_recall(found, exact) == pytest.approx((2 / 4 + 1) / 2)
    with pytest.raises(ValueError, match="backend"):
        knn_index(torch.zeros(3, 2), backend="annoy")


def test_faiss_is_imported_only_when_used():
    code = (
        "import sys, torch; from cbir_lightning.retrieval import knn; "
        "import cbir_lightning.metrics, cbir_lightning.cli.evaluate; "
        "knn(torch.randn(4, 3), torch.randn(9, 3), 2); print('faiss' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("n", "k"), [(1000, 10), (1003, 26), (40, 5), (64, 3)])
def test_grouped_topk_values_equal_topk(n, k):
    from cbir_lightning.retrieval.torch_knn import grouped_topk

    g = torch.Generator().manual_seed(n)
    scores = torch.randn(17, n, generator=g).round(decimals=1)  # many ties
    values, found = grouped_topk(scores, k)
    assert torch.equal(values, torch.topk(scores, k, dim=1).values)
    assert torch.equal(scores.gather(1, found), values)
    assert all(len(set(row)) == k for row in found.tolist())


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_faiss_index_saved_and_loaded_searches_as_raw_faiss(data, metric, tmp_path):
    """``rescore=False`` is faiss's own result (the image search's, unchanged); a saved index, loaded over
    the same vectors, searches as the one it was saved from (exact search included)."""
    import faiss

    from cbir_lightning.retrieval.faiss_knn import FaissKnn

    query, database = data
    built = FaissKnn(database, metric)
    built.save(tmp_path / "x.index")
    loaded = FaissKnn.load(tmp_path / "x.index", database, metric)
    assert loaded.kind == "flat" and loaded.exact
    raw = faiss.read_index(str(tmp_path / "x.index"))
    distances, indices = raw.search(query.numpy(), 7)
    scores, found = loaded.search(query, 7, rescore=False)
    assert torch.equal(found, torch.from_numpy(indices))
    expected = torch.from_numpy(distances).double()
    assert torch.equal(scores, -expected.sqrt() if metric == "l2" else expected)
    for a, b in zip(loaded.search(query, 7), built.search(query, 7), strict=True):
        assert torch.equal(a, b)


def test_loaded_index_of_unknown_kind_is_refused(data):
    import faiss

    from cbir_lightning.retrieval.faiss_knn import FaissKnn

    _, database = data
    with pytest.raises(ValueError, match="Unsupported faiss index"):
        FaissKnn(database, "dot", index=faiss.IndexLSH(database.shape[1], 16))


@pytest.fixture(scope="module")
def many_queries():
    """Enough queries for the exact backend to choose faiss, with exact duplicates (ties at any cut-off)."""
    g = torch.Generator().manual_seed(1)
    database = torch.randn(300, 32, generator=g).round(decimals=1)  # coarse values: exact score ties
    database[50:70] = database[3]
    query = torch.randn(4000, 32, generator=g).round(decimals=1)  # faiss-cpu 1.15: BLAS from 4000 32-d
    query[:40] = database[3]
    return query, database


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [10, 400])  # k > n: every item, ranked
def test_exact_backend_chooses_faiss_for_large_batches_with_identical_results(many_queries, metric, k):
    pytest.importorskip("faiss")
    from cbir_lightning.retrieval.exact_knn import ExactKnn
    from cbir_lightning.retrieval.faiss_knn import min_queries

    query, database = many_queries
    assert ExactKnn.choose(len(query), 32) == "faiss" and ExactKnn.choose(5000, 128) == "faiss"
    assert ExactKnn.choose(min_queries(32) - 1, 32) == ExactKnn.choose(10, 128) == "torch"
    index = knn_index(database, metric)  # the default: exact
    got = index.search(query, k)
    assert index._faiss is not None  # went to faiss
    small = index.search(query[:5], k)  # few queries: torch
    for backend in ("torch", "faiss"):
        expected = knn(query, database, k, metric, backend)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert torch.equal(small[1], got[1][:5]) and torch.equal(small[0], got[0][:5])
    assert got[1].shape == (len(query), min(k, len(database)))
    reference = _brute_force(query, database, k, metric)
    assert torch.equal(got[1][:40], reference[:40])  # the duplicate block: ties by lower index
    if metric != "dot":
        assert got[1][0, :4].tolist() == [3, 50, 51, 52]
    if k > len(database):
        assert torch.equal(got[1].sort(1).values, torch.arange(len(database)).expand(len(query), -1))


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_blocks_side_by_side_equal_one_block(many_queries, metric, monkeypatch):
    """The faiss flat search in query blocks on worker threads equals the single-block search."""
    pytest.importorskip("faiss")
    from cbir_lightning.retrieval import faiss_knn

    query, database = many_queries
    index = faiss_knn.FaissKnn(database, metric)
    one = index.search(query, 12)
    monkeypatch.setattr(faiss_knn, "min_queries", lambda dim: 100)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # two workers even on a one-core machine
    try:
        blocks = index.search(query, 12)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], blocks[0]) and torch.equal(one[1], blocks[1])


def test_rescoring_only_the_first_k_is_exact_with_near_ties_at_the_boundary():
    """Items whose float32 scores are within rounding of the k-th are re-scored: a tie that float32
    breaks the wrong way (by index) is still ordered by the canonical float64 score, then index."""
    database = torch.zeros(200, 4)
    database[:, 0] = 1.0
    database[10, 1] = 2.0**-30  # canonically above the other tied items, equal in float32 after + 1
    query = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    for backend in ("torch", "faiss"):
        scores, idx = knn(query, database, 3, "dot", backend)
        assert idx.tolist() == [[10, 0, 1]]
        assert scores[0, 0] > scores[0, 1] == scores[0, 2] == 1.0


def test_candidate_within_twice_the_error_of_the_kth_is_rescored():
    """A candidate ranked below the k-th by its approximate score, but within 2 x error of it, can be
    canonically above: it must be re-scored (re-scoring only the first k would miss item 2)."""
    from cbir_lightning.retrieval.exact import exact_topk

    database = torch.zeros(50, 1)
    database[:3, 0] = torch.tensor([5.0, 4.0, 4.1])
    database[3, 0] = 1.0

    def candidates(query, rows, size):  # approximate scores within 0.2 of the canonical ones
        found = torch.arange(size).expand(len(query), -1)
        approx = torch.cat([torch.tensor([5.0, 4.0, 3.95, 1.0]), torch.zeros(size - 4)]).double()
        return found, approx.expand(len(query), -1), torch.full((len(query),), 0.2, dtype=torch.float64)

    scores, idx = exact_topk(torch.ones(2, 1), database, 2, "dot", candidates, margin=4)
    assert idx.tolist() == [[0, 2]] * 2
    assert scores[0].tolist() == pytest.approx([5.0, 4.1])
