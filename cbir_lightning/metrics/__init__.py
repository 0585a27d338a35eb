"""Pure-tensor retrieval and one-shot metrics (no Lightning dependencies)."""

from cbir_lightning.metrics.oneshot import episode_scores, oneshot_accuracy
from cbir_lightning.metrics.pr_curve import precision_recall_curve
from cbir_lightning.metrics.ranking import positive_ranks
from cbir_lightning.metrics.retrieval import (
    average_precision,
    metrics_from_ranks,
    per_query_metrics,
    ranked_relevance,
    retrieval_metrics,
)
from cbir_lightning.metrics.revisited import original_metrics, protocol_lists, revisited_metrics
from cbir_lightning.metrics.similarity import pairwise_similarity

__all__ = [
    "average_precision",
    "episode_scores",
    "metrics_from_ranks",
    "oneshot_accuracy",
    "original_metrics",
    "pairwise_similarity",
    "per_query_metrics",
    "positive_ranks",
    "precision_recall_curve",
    "protocol_lists",
    "ranked_relevance",
    "retrieval_metrics",
    "revisited_metrics",
]
