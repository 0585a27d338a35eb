"""Pure-tensor retrieval and one-shot metrics (no Lightning dependencies)."""

from cbir_lightning.metrics.oneshot import episode_scores, oneshot_accuracy
from cbir_lightning.metrics.retrieval import average_precision, ranked_relevance, retrieval_metrics
from cbir_lightning.metrics.similarity import pairwise_similarity

__all__ = [
    "average_precision",
    "episode_scores",
    "oneshot_accuracy",
    "pairwise_similarity",
    "ranked_relevance",
    "retrieval_metrics",
]
