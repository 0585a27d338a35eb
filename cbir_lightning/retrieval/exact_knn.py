"""Exact k-NN that runs each search on the faster exact backend: faiss flat for batches that faiss
searches with BLAS (queries x dimension >= faiss's ``distance_compute_blas_threshold``; then about ``k``
candidates per query are re-scored), torch otherwise (faiss's scan of few queries is slower than a
matmul). Both return identical results (:mod:`cbir_lightning.retrieval.exact`): the choice changes only
the time. faiss is imported only when a large batch comes."""

from __future__ import annotations

from importlib.util import find_spec

from torch import Tensor

from cbir_lightning.retrieval.faiss_knn import BLAS_THRESHOLD, FaissKnn, min_queries
from cbir_lightning.retrieval.torch_knn import TorchKnn


class ExactKnn:
    """Exact k-NN over a fixed database, torch or faiss flat per search (see the module docstring).

    Args:
        database: ``[n, d]`` vectors.
        metric: ``cosine``, ``dot`` or ``l2`` (scores are ``-distance``).
        chunk_size: the torch backend's queries scored at once (see :class:`TorchKnn`).
    """

    exact = True

    def __init__(self, database, metric: str = "cosine", chunk_size: int | None = None) -> None:
        self.torch = TorchKnn(database, metric, chunk_size)
        self.metric, self.database = metric, self.torch.database
        self._source = database  # faiss prepares it as torch did (normalising twice could round)
        self._faiss: FaissKnn | None = None

    def search(self, query, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` ``(scores float64 [nq, k], indices int64 [nq, k])``, ties: lower index first."""
        if self.choose(len(query), self.database.shape[1]) == "torch":
            return self.torch.search(query, k)
        if self._faiss is None:
            self._faiss = FaissKnn(self._source, self.metric, index="flat")
        return self._faiss.search(query, k)

    @staticmethod
    def choose(queries: int, dim: int) -> str:
        """The backend for ``queries`` of dimension ``dim``: ``faiss`` (flat) or ``torch``. faiss is
        imported only for batches at least as large as faiss's default BLAS threshold."""
        if queries * dim < BLAS_THRESHOLD or find_spec("faiss") is None:
            return "torch"
        return "faiss" if queries >= min_queries(dim) else "torch"
