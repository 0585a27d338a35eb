"""``FeatureCache``: train and evaluate the new layers of a model with a frozen trunk from cached features.

When the module has a frozen part (:class:`~cbir_lightning.contracts.FrozenTrunkModel`, e.g.
``GeMSiameseModule(freeze: backbone)``) and the DataModule can serve features
(:class:`~cbir_lightning.contracts.FeatureData`), the DataModule's loaders give that part's outputs instead
of images: when a loader is made (after a checkpoint's weights are loaded, so ``validate --ckpt_path``
reads the checkpoint's trunk), the trunk is run once for every training item's evaluation view and
``views`` augmented views, or every evaluation item, into a
:class:`~cbir_lightning.features.store.FeatureStore` under ``root`` (only what the store lacks: a second run
reads it). An epoch then costs the new layers only: hundreds of epochs in the time one end-to-end epoch
took. Without a frozen part (or once :class:`~cbir_lightning.callbacks.Unfreeze` has unfrozen it) the
loaders give images.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from cbir_lightning.contracts import FeatureData, FrozenTrunkModel
from cbir_lightning.errors import CbirError
from cbir_lightning.features.fill import fill_store
from cbir_lightning.features.onnx_trunk import onnx_trunk
from cbir_lightning.features.store import FeatureStore, module_digest
from cbir_lightning.features.views import CachedViews, FileDigests, identities

DTYPES = {"float16": torch.float16, "float32": torch.float32}
ENGINES = ("onnxruntime", "torch")


def default_root() -> Path:
    """``$CBIR_FEATURE_CACHE``, else ``$XDG_CACHE_HOME/cbir_lightning/features`` (``~/.cache/...``)."""
    if os.environ.get("CBIR_FEATURE_CACHE"):
        return Path(os.environ["CBIR_FEATURE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cbir_lightning" / "features"


class FeatureCache(Callback):
    """Args:
    root: the cache folder, shared by runs and configs (default: ``$CBIR_FEATURE_CACHE`` or
        ``~/.cache/cbir_lightning/features``).
    views: augmented views stored per training item (random resized crops and flips); training draws one
        of them or the evaluation view for each sample.
    dtype: ``float16`` (half the disk) or ``float32``.
    engine: ``onnxruntime`` (the trunk exported once and run by ONNX Runtime, checked against PyTorch on
        a first view; PyTorch where that fails) or ``torch``.
    batch_size / num_workers: the trunk's batches and the decoding workers while the cache is filled.
    shard_size: views per shard file (what a killed build keeps).
    progress: a progress bar while views are computed, and one line per split saying how many views were
        computed and how many read.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        views: int = 4,
        dtype: str = "float16",
        engine: str = "onnxruntime",
        batch_size: int = 32,
        num_workers: int = 2,
        shard_size: int = 512,
        progress: bool = True,
    ) -> None:
        if views < 0:
            raise CbirError(f"FeatureCache views must be 0 or more, got {views}")
        if dtype not in DTYPES:
            raise CbirError(f"FeatureCache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.root = Path(root) if root is not None else default_root()
        if engine not in ENGINES:
            raise CbirError(f"FeatureCache engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.views, self.dtype, self.engine = int(views), dtype, engine
        self.batch_size, self.num_workers, self.progress = batch_size, num_workers, progress
        if shard_size < 1:
            raise CbirError(f"FeatureCache shard_size must be positive, got {shard_size}")
        self.shard_size = int(shard_size)
        self.computed: dict[str, int] = {}  # views computed at the last load, per split (the rest were read)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, FrozenTrunkModel):
            return
        datamodule = trainer.datamodule
        if not isinstance(datamodule, FeatureData):
            if pl_module.frozen_trunk() is None:
                return
            raise CbirError(
                f"FeatureCache: {type(datamodule).__name__} cannot serve cached features; drop the "
                "feature_cache callback or use a DataModule that can (photo collections, CIFAR-10)"
            )
        datamodule.serve_features(CachedFeatures(self, pl_module, report=trainer.is_global_zero))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.datamodule, FeatureData):
            trainer.datamodule.serve_features(None)


class CachedFeatures:
    """What a DataModule's loaders ask for: the cached views of its ``"train"`` or ``"eval"`` items under
    the module's frozen trunk as it is when the loader is made (after a checkpoint's weights are loaded),
    computing what the store lacks; None when the module has no frozen part (any more). ``report``: this
    process writes the progress bar and the computed/read line (DDP: rank 0)."""

    def __init__(self, cache: FeatureCache, module: FrozenTrunkModel, report: bool = True) -> None:
        self.cache, self.module, self.report = cache, module, report
        self._made: dict[tuple[str, str], CachedViews] = {}
        self._onnx: tuple | None = None  # (trunk, its OnnxTrunk or None)

    def views(self, split: str, datamodule: FeatureData) -> CachedViews | None:
        trunk = self.module.frozen_trunk()
        if trunk is None:
            return None
        cache = self.cache
        digest = module_digest(trunk)
        if (split, digest) in self._made:
            return self._made[split, digest]
        views = cache.views if split == "train" else 0
        source = datamodule.view_source(split)
        engine = self._engine(trunk, source)
        recipe = {
            "views": source.recipe,
            "dtype": cache.dtype,
            "engine": "onnxruntime" if engine else "torch",
        }
        store = FeatureStore.open(cache.root, digest, recipe)
        names = identities(source, FileDigests(cache.root))
        computed = fill_store(
            store,
            trunk,
            source,
            names,
            views,
            embed=engine,
            dtype=DTYPES[cache.dtype],
            batch_size=cache.batch_size,
            num_workers=cache.num_workers,
            shard_size=cache.shard_size,
            progress=cache.progress,
            what=f"{split} views",
        )
        cache.computed[split] = computed
        if cache.progress and self.report:
            total = len(names) * (views + 1)
            sys.stderr.write(
                f"cbir-lightning: feature cache {store.folder}: {split} views: {computed} computed, "
                f"{total - computed} read\n"
            )
        self._made[split, digest] = CachedViews(store, names, views)
        return self._made[split, digest]

    def _engine(self, trunk, source):
        """The ONNX Runtime trunk (checked on the first item's evaluation view), or None: PyTorch."""
        if self.cache.engine != "onnxruntime" or len(source) == 0:
            return None
        if self._onnx is None or self._onnx[0] is not trunk:
            self._onnx = (trunk, onnx_trunk(trunk, torch.stack([source.view(0, None)] * 2)))
        return self._onnx[1]
