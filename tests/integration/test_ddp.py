"""Metrics are exact under DDP: `fit` on 2 CPU processes (gloo) logs the numbers one process computes for
the same checkpoint, although DistributedSampler pads the odd-sized validation set with a repeat (the
gathering itself: tests/unit/callbacks/test_gather.py)."""

from __future__ import annotations

import math

from helpers.cli import TINY_ARGS, last_json, run_cli
from helpers.paths import REPO

CONFIG = str(REPO / "configs" / "omniglot_koch.yaml")
# 47 characters x 3 drawers = 141 images: odd, so each of 2 ranks gets 71 and one image is seen twice
ODD_VAL = [
    "--data.init_args.val_alphabets",
    "[Japanese_(katakana)]",
    "--data.init_args.val_drawers",
    "[1, 2, 3]",
    "--data.init_args.eval_batch_size",
    "16",
    "--data.init_args.trials",
    "60",
]


def test_ddp_fit_logs_the_single_process_numbers(omniglot_root, tmp_path):
    common = ["--config", CONFIG, "--data.init_args.root", str(omniglot_root), *TINY_ARGS, *ODD_VAL]
    ddp = run_cli(["fit", *common, "--trainer.strategy", "ddp", "--trainer.devices", "2"], cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    distributed = last_json(ddp.stdout)
    assert distributed["num_queries"] == 141
    ckpt = tmp_path / distributed["checkpoint"]
    single = run_cli(["validate", *common, "--ckpt_path", str(ckpt)], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    one = last_json(single.stdout)
    for key in ("mAP", "mAP@R", "recall@1", "recall@5", "precision@10", "oneshot_20way", "num_queries"):
        assert math.isclose(distributed[key], one[key], abs_tol=1e-6), (key, distributed[key], one[key])
