from cbir_lightning.callbacks.retrieval_metrics import RetrievalMetrics

__all__ = ["RetrievalMetrics"]
