"""Running the ``cbir-lightning`` CLI in a subprocess, reading its JSON result, and tiny run settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def make_runs(sources: Path, out: Path, alphabets: str, num_runs: int, cwd: Path) -> Path:
    """``cbir-lightning make-runs``: ``num_runs`` Lake-format runs from the Omniglot zips in ``sources``
    (``alphabets``: a list in the CLI's syntax, e.g. ``"[Sanskrit]"``) written to ``out``."""
    args = ["make-runs", "--sources", f"[{sources}]", "--out", str(out), "--alphabets", alphabets]
    made = run_cli([*args, "--num_runs", str(num_runs)], cwd=cwd)
    assert made.returncode == 0, made.stderr[-2000:]
    return out
