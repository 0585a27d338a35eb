"""One entry point for k-NN search over the backends, and the recall of an approximate search."""

from __future__ import annotations

import torch
from torch import Tensor

from cbir_lightning.retrieval.exact_knn import ExactKnn
from cbir_lightning.retrieval.faiss_knn import FaissKnn
from cbir_lightning.retrieval.torch_knn import TorchKnn

BACKENDS = ("exact", "torch", "faiss", "faiss-ivf", "faiss-hnsw")


def knn_index(database, metric: str = "cosine", backend: str = "exact", **options):
    """A searchable index: ``exact`` (the faster of torch and faiss flat for each batch), ``torch`` /
    ``faiss`` (exact; all three give identical rankings) or ``faiss-ivf`` / ``faiss-hnsw`` (approximate).
    ``options`` go to the backend's class."""
    if backend == "exact":
        return ExactKnn(database, metric, **options)
    if backend == "torch":
        return TorchKnn(database, metric, **options)
    if backend in ("faiss", "faiss-ivf", "faiss-hnsw"):
        kind = {"faiss": "flat", "faiss-ivf": "ivf", "faiss-hnsw": "hnsw"}[backend]
        return FaissKnn(database, metric, index=kind, **options)
    raise ValueError(f"Unknown k-NN backend {backend!r}; expected one of {BACKENDS}.")


def knn(
    query, database, k: int, metric: str = "cosine", backend: str = "exact", **options
) -> tuple[Tensor, Tensor]:
    """Top-``k`` database items of every query: ``(scores float64 [nq, k], indices int64 [nq, k])``.

    Scores are similarities (``l2``: ``-distance``), sorted descending; ties: lower index first.
    """
    return knn_index(database, metric, backend, **options).search(query, k)


def knn_recall(found: Tensor, exact: Tensor) -> float:
    """Mean fraction of each query's exact top-k (``exact [nq, k]``) present in ``found [nq, k']``."""
    found, exact = torch.as_tensor(found), torch.as_tensor(exact)
    if exact.numel() == 0:
        return float("nan")
    hits = (exact[:, :, None] == found[:, None, :]).any(-1)
    return hits.double().mean().item()
