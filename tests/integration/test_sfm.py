"""SfM-120k through the CLI: a tiny `cbir-lightning fit` of configs/sfm_gem_tiny.yaml with `--data.root`, and
the paper config parses."""

from __future__ import annotations

import json

import pytest
from helpers.cli import last_json, run_cli
from helpers.paths import REPO
from helpers.sfm import make_revisited_layout

from cbir_lightning.wandb_offline import read_offline_run


def test_cli_fit_tiny_config_with_short_root(release, tmp_path):
    make_revisited_layout(tmp_path / "oxford")
    args = [
        "fit",
        "--config",
        str(REPO / "configs" / "sfm_gem_tiny.yaml"),
        "--data.root",
        str(release),
        "--trainer.max_epochs",
        "1",
        "--data.init_args.image_size",
        "40",
        "--data.init_args.query_size",
        "8",
        "--data.init_args.num_workers",
        "0",
    ]
    landmarks = [
        "--trainer.callbacks+=cbir_lightning.callbacks.LandmarkMetrics",
        "--trainer.callbacks.data",
        json.dumps(
            {
                "class_path": "data_modules.LandmarksTestDataModule",
                "init_args": {"root": str(tmp_path / "oxford"), "image_size": 48, "num_workers": 0},
            }
        ),
    ]
    proc = run_cli(args + landmarks, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["checkpoint"].endswith(".ckpt") and 0 <= result["mAP"] <= 1 and result["num_queries"] == 9
    assert all(0 <= result[f"roxford5k/mAP_{p}"] <= 1 for p in "EMH")
    runs = list((tmp_path / "runs" / "sfm_gem_tiny" / "wandb").glob("offline-run-*"))
    summary = read_offline_run(runs[0])["summary"]
    assert 0 < summary["train/neg_distance"] <= 2  # mean L2 distance of unit vectors
    assert summary["val/roxford5k/mAP_M"] == pytest.approx(result["roxford5k/mAP_M"], abs=1e-6)


def test_paper_config_parses(tmp_path):
    proc = run_cli(
        ["fit", "--config", str(REPO / "configs" / "sfm120k_gem_resnet101.yaml"), "--print_config"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for line in (
        "backbone: resnet101",
        "weights: IMAGENET1K_V1",
        "margin: 0.85",
        "lr: 5.0e-07",
        "image_size: 362",
        "neg_num: 5",
        "query_size: 2000",
        "freeze_batchnorm: true",
    ):
        assert line in text, line
