from cbir_lightning.callbacks.feature_cache import FeatureCache
from cbir_lightning.callbacks.fit_whitening import FitWhitening
from cbir_lightning.callbacks.landmark_metrics import LandmarkMetrics
from cbir_lightning.callbacks.metrics_history import MetricsHistory
from cbir_lightning.callbacks.model_file import ModelFileWriter
from cbir_lightning.callbacks.retrieval_metrics import RetrievalMetrics
from cbir_lightning.callbacks.stop_on_nonfinite import StopOnNonFinite
from cbir_lightning.callbacks.unfreeze import Unfreeze

__all__ = [
    "FeatureCache",
    "FitWhitening",
    "LandmarkMetrics",
    "MetricsHistory",
    "ModelFileWriter",
    "RetrievalMetrics",
    "StopOnNonFinite",
    "Unfreeze",
]
