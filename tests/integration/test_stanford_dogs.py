"""A tiny `cbir-lightning fit` of configs/stanford_dogs_koch.yaml on a generated Stanford Dogs release."""

from __future__ import annotations

from helpers.cli import last_json, run_cli
from helpers.paths import REPO
from helpers.stanford_dogs import write_release


def test_koch_config_fits_on_a_generated_release(tmp_path):
    write_release(tmp_path / "dogs")
    proc = run_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "stanford_dogs_koch.yaml"),
            "--data.init_args.root",
            str(tmp_path / "dogs"),
            "--data.init_args.image_size",
            "24",
            "--data.init_args.classes_per_batch",
            "3",
            "--data.init_args.epoch_length",
            "2",
            "--data.init_args.num_workers",
            "0",
            "--model.init_args.net.init_args.channels",
            "[4, 4, 4, 4]",
            "--model.init_args.net.init_args.embedding_dim",
            "16",
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_epochs",
            "1",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    assert result["num_queries"] == 6 and 0 < result["mAP"] <= 1
