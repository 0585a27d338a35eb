"""Shared fixtures: the real small data in ../shared/data and one tiny trained checkpoint per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
OMNIGLOT = SHARED_DATA / "omniglot"

# Small enough for a few seconds of CPU, same code paths as the demo config.
TINY_ARGS = [
    "--data.init_args.image_size",
    "28",
    "--data.init_args.epoch_length",
    "4",
    "--data.init_args.classes_per_batch",
    "16",
    "--data.init_args.trials",
    "100",
    "--data.init_args.num_workers",
    "0",
    "--model.init_args.net.init_args.channels",
    "[8, 8, 8, 8]",
    "--model.init_args.net.init_args.embedding_dim",
    "32",
    "--trainer.max_epochs",
    "1",
]


# The Omniglot DataModule's init_args for a GeM fit of a few seconds (configs/omniglot_gem.yaml).
TINY_GEM_DATA = {
    "image_size": 32,
    "epoch_length": 2,
    "classes_per_batch": 8,
    "samples_per_class": 4,
    "train_drawers": [1, 2, 3],
    "val_drawers": [1, 2, 3, 4],
    "ways": 5,
    "trials": 20,
    "num_workers": 0,
}

@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    if not OMNIGLOT.is_dir():
        pytest.skip(f"real Omniglot small sets not found at {OMNIGLOT}")
    return OMNIGLOT


def run_cli(
    args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m cbir_lightning ARGS`` in ``cwd`` offline, capturing output."""
    full_env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONWARNINGS": "ignore",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "cbir_lightning", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])


@pytest.fixture(scope="session")
def tiny_run(omniglot_root, tmp_path_factory) -> dict:
    """A tiny `fit` of the demo config on the real small sets: its workdir, JSON result and checkpoint."""
    work = tmp_path_factory.mktemp("tiny_fit")
    proc = run_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "omniglot_koch.yaml"),
            "--data.init_args.root",
            str(omniglot_root),
            *TINY_ARGS,
        ],
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    ckpt = Path(result["checkpoint"])
    return {
        "work": work,
        "result": result,
        "ckpt": ckpt if ckpt.is_absolute() else work / ckpt,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }
