"""Feature caches: what the frozen part of a model computes for each image view, stored once on disk and
read back memory-mapped, so the layers after it train for many epochs at the cost of those layers alone
(:class:`~cbir_lightning.callbacks.FeatureCache` runs it during ``fit``/``validate``)."""

from cbir_lightning.features.fill import fill_store
from cbir_lightning.features.store import FeatureStore, module_digest, store_key
from cbir_lightning.features.views import CachedViews, FileDigests, identities, view_generator, view_name

__all__ = [
    "CachedViews",
    "FeatureStore",
    "FileDigests",
    "fill_store",
    "identities",
    "module_digest",
    "store_key",
    "view_generator",
    "view_name",
]
