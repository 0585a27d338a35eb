"""MetricsHistory: one JSON line per validation epoch of a fit, repeated epochs (a resumed run) replaced,
sanity checks and plain validate runs not recorded."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from pytorch_lightning.trainer.states import TrainerFn

from cbir_lightning.callbacks import MetricsHistory
from cbir_lightning.callbacks.metrics_history import read_history


def _trainer(root, epoch: int, metrics: dict, fn=TrainerFn.FITTING, sanity=False):
    return SimpleNamespace(
        default_root_dir=str(root),
        current_epoch=epoch,
        global_step=10 * (epoch + 1),
        callback_metrics={k: torch.tensor(v) for k, v in metrics.items()},
        sanity_checking=sanity,
        state=SimpleNamespace(fn=fn),
        is_global_zero=True,
    )


def test_one_line_per_epoch_and_a_resumed_epoch_replaces_its_line(tmp_path):
    history = MetricsHistory()
    history.on_validation_end(_trainer(tmp_path, 0, {"val/mAP": 0.25, "train/loss": 1.0}, sanity=True), None)
    assert not (tmp_path / "metrics.jsonl").exists()
    history.on_validation_end(_trainer(tmp_path, 0, {"val/mAP": 0.25, "val/oneshot_20way": 0.5}), None)
    history.on_validation_end(_trainer(tmp_path, 1, {"val/mAP": 0.5, "train/loss": 1.0}), None)
    history.on_validation_end(_trainer(tmp_path, 1, {"val/mAP": 0.75}), None)  # resumed after a kill
    history.on_validation_end(_trainer(tmp_path, 2, {"val/mAP": 0.9}, fn=TrainerFn.VALIDATING), None)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [
        {"epoch": 0, "step": 10, "mAP": 0.25, "oneshot_20way": 0.5},
        {"epoch": 1, "step": 20, "mAP": 0.75},
    ]
    assert read_history(tmp_path / "metrics.jsonl")[1]["mAP"] == 0.75
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left
