"""k-NN search backends: exact torch and faiss (identical rankings), approximate faiss IVF / HNSW."""

from cbir_lightning.retrieval.knn import BACKENDS, knn, knn_index, knn_recall

__all__ = ["BACKENDS", "knn", "knn_index", "knn_recall"]
