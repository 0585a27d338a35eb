"""Training the new layers from a feature cache vs end to end: throughput of one epoch of the same batches,
and the time to reach the end-to-end recipe's held-out mAP.

Both run in this process on the same config and data (default ``configs/photos_finetune.yaml``): the same
model (the config's backbone and head) and the same class batches (the DataModule's sampler, same seed), so
the same items; the cached run reads each item's stored view (computed once by the frozen trunk), the
end-to-end run decodes, augments and passes every image through the whole net (backbone trainable, BatchNorm
frozen, as the recipe's second stage). Prints one JSON line per measurement, then the summary:

* ``cache_build_s``: filling the cache from cold (every training view and the evaluation views);
* ``cached_images_per_s`` / ``end_to_end_images_per_s``: one training epoch each (warm cache; no validation),
  and their ``ratio``;
* ``end_to_end_map``: held-out mAP after ``--e2e-epochs`` end-to-end epochs (``end_to_end_s`` of training);
* ``cached_s_to_reach``: training time from the warm cache until the held-out mAP reaches ``end_to_end_map``
  (validated after every epoch, at most ``--max-head-epochs``), null if it never does, with the best mAP.

    .venv/bin/python benchmarks/head_training.py --root data/stanford_dogs \\
        [--config configs/photos_finetune.yaml] [--epoch-length 60] [--e2e-epochs 1] \\
        [--max-head-epochs 30] [-- --data.init_args.layout stanford_dogs ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from cbir_lightning.callbacks import FeatureCache, RetrievalMetrics
from cbir_lightning.callbacks.feature_cache import CachedFeatures
from cbir_lightning.cli.lightning_cli import build_from_config

REPO = Path(__file__).resolve().parents[1]


def build(config: str, root: str, epoch_length: int, extra: list[str], end_to_end: bool):
    """``(model, datamodule, the config's FeatureCache)`` as ``fit`` builds them; ``end_to_end``: nothing
    frozen (the recipe's second stage)."""
    overrides = ["--data.init_args.root", root, "--data.init_args.epoch_length", str(epoch_length), *extra]
    if end_to_end:
        overrides += ["--model.init_args.freeze", "null", "--model.init_args.trainable_stages", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, datamodule, built = build_from_config(config, *overrides)
    caches = [c for c in built.callbacks if isinstance(c, FeatureCache)]
    return model, datamodule, caches[0] if caches else FeatureCache()


def cache_at(root: Path, like: FeatureCache) -> FeatureCache:
    """The config's cache settings with another root, quiet."""
    return FeatureCache(
        root, like.views, like.dtype, like.engine, like.batch_size, like.num_workers, like.shard_size, False
    )


def trainer(callbacks: list, epochs: int, validate: bool) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
        callbacks=callbacks,
    )


class EpochTimes(pl.Callback):
    """Seconds of each training epoch (batches only) and the held-out mAP after it."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.maps: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and "val/mAP" in trainer.callback_metrics:
            self.maps.append(float(trainer.callback_metrics["val/mAP"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(self._end - self._start)


class StopAt(pl.Callback):
    def __init__(self, target: float) -> None:
        self.target = target

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("val/mAP")
        if value is not None and float(value) >= self.target:
            trainer.should_stop = True


def emit(record: dict) -> None:
    print(json.dumps({"benchmark": "head_training", **record}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "photos_finetune.yaml"))
    parser.add_argument("--root", required=True, help="the labelled photos (the config's data.root)")
    parser.add_argument("--epoch-length", type=int, default=60, help="batches per epoch")
    parser.add_argument("--e2e-epochs", type=int, default=1)
    parser.add_argument("--max-head-epochs", type=int, default=30)
    parser.add_argument("--cache", default=None, help="cache folder (default: a new temporary one, cold)")
    parser.add_argument("overrides", nargs="*", help="more config overrides, after --")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cache_root = Path(args.cache or tmp)
        metrics = RetrievalMetrics(log_examples=0, embedding_table=0)

        # the cache, from cold: every training view and the evaluation views
        model, datamodule, configured = build(
            args.config, args.root, args.epoch_length, args.overrides, False
        )
        cache = cache_at(cache_root, configured)
        datamodule.setup("fit")
        start = time.perf_counter()
        views = CachedFeatures(cache, model, report=False)
        views.views("train", datamodule)
        views.views("eval", datamodule)
        build_s = time.perf_counter() - start
        emit({"measure": "cache_build", "seconds": round(build_s, 2), "views": dict(cache.computed)})

        # one epoch from the (now warm) cache and one end to end: the same batches
        times = EpochTimes()
        trainer([cache_at(cache_root, configured), times], 1, False).fit(model, datamodule=datamodule)
        batch_images = datamodule.hparams.classes_per_batch * datamodule.hparams.samples_per_class
        images = args.epoch_length * batch_images
        cached_ips = images / times.seconds[0]
        e2e_model, e2e_data, _ = build(args.config, args.root, args.epoch_length, args.overrides, True)
        e2e_times = EpochTimes()
        trainer([metrics, e2e_times], args.e2e_epochs, True).fit(e2e_model, datamodule=e2e_data)
        e2e_ips = images / e2e_times.seconds[0]
        emit(
            {
                "measure": "epoch",
                "images": images,
                "cached_images_per_s": round(cached_ips, 2),
                "end_to_end_images_per_s": round(e2e_ips, 2),
                "ratio": round(cached_ips / e2e_ips, 2),
            }
        )
        target = e2e_times.maps[-1]

        # head epochs from the warm cache until the end-to-end recipe's held-out mAP
        model, datamodule, _ = build(args.config, args.root, args.epoch_length, args.overrides, False)
        head_times = EpochTimes()
        callbacks = [cache_at(cache_root, configured), metrics, head_times, StopAt(target)]
        trainer(callbacks, args.max_head_epochs, True).fit(model, datamodule=datamodule)
        reached = next((i for i, m in enumerate(head_times.maps) if m >= target), None)
        to_reach = None if reached is None else round(sum(head_times.seconds[: reached + 1]), 2)
        summary = {
            "measure": "summary",
            "config": args.config,
            "cache_build_s": round(build_s, 2),
            "cached_images_per_s": round(cached_ips, 2),
            "end_to_end_images_per_s": round(e2e_ips, 2),
            "ratio": round(cached_ips / e2e_ips, 2),
            "end_to_end_epochs": args.e2e_epochs,
            "end_to_end_s": round(sum(e2e_times.seconds), 2),
            "end_to_end_map": round(target, 4),
            "cached_s_to_reach": to_reach,
            "cached_epochs_to_reach": None if reached is None else reached + 1,
            "cached_best_map": round(max(head_times.maps), 4),
        }
        emit(summary)


if __name__ == "__main__":
    main()
