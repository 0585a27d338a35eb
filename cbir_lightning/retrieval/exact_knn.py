"""Exact k-NN that runs each search on the faster exact backend: faiss flat for batches of at least
``faiss_knn.MIN_QUERIES`` queries (faiss's BLAS search, then a re-scoring of about ``k`` candidates per
query), torch otherwise (faiss's scan of few queries is slower than a torch matmul). Both return identical
results (:mod:`cbir_lightning.retrieval.exact`): the choice changes only the time. faiss is imported only
when a large batch comes."""

from __future__ import annotations

from importlib.util import find_spec

from torch import Tensor

from cbir_lightning.retrieval.faiss_knn import MIN_QUERIES, FaissKnn
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
        if self.choose(len(query)) == "torch":
            return self.torch.search(query, k)
        if self._faiss is None:
            self._faiss = FaissKnn(self._source, self.metric, index="flat")
        return self._faiss.search(query, k)

    @staticmethod
    def choose(queries: int) -> str:
        """The backend for a batch of ``queries``: ``faiss`` (flat) or ``torch``."""
        return "faiss" if queries >= MIN_QUERIES and find_spec("faiss") is not None else "torch"
