"""k-NN search backends: exact (torch or faiss flat per batch, identical rankings), approximate IVF / HNSW."""

from cbir_lightning.retrieval.knn import BACKENDS, knn, knn_index, knn_recall

__all__ = ["BACKENDS", "knn", "knn_index", "knn_recall"]
