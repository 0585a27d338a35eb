"""Retrieval quality on real photos: pretrained vs fine-tuned, per data set, as JSON lines.

Each row runs one README command (``cbir-lightning evaluate --config ...`` for a pretrained baseline, ``fit``
for a fine-tuned config, which ends by validating its best checkpoint) in a fresh process and prints the
command, its wall time and its metrics. The pairs are scored on the same held-out photos (unseen breeds,
unseen artists, CIFAR-10 test queries against the training images), so each fine-tuned row reads
against the pretrained row above it.

    .venv/bin/python benchmarks/quality.py [--sets cifar10 stanford_dogs wikiart] [--data data]
        [--pretrained-only] [--extra ...]

``--extra`` appends overrides to every command (e.g. ``--trainer.max_epochs 1`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = {
    "cifar10": [
        ("evaluate", "cifar10_pretrained"),
        ("fit", "cifar10_finetune"),
        ("fit", "cifar10_dsh_pretrained"),
    ],
    "stanford_dogs": [("evaluate", "stanford_dogs_pretrained"), ("fit", "stanford_dogs_finetune")],
    "wikiart": [("evaluate", "wikiart_pretrained"), ("fit", "wikiart_finetune")],
}
ROOTS = {"cifar10": "cifar10", "stanford_dogs": "stanford_dogs", "wikiart": "wikiart_pd"}
KEYS = ("mAP", "recall@1", "recall@10", "precision@10", "num_queries")


def timed_json(args: list[str], cwd: Path, error_lines: int = 1) -> tuple[dict, float]:
    """``cbir-lightning ARGS`` in a fresh process (W&B offline): its last JSON line and its wall time in
    seconds; exits with the last ``error_lines`` lines of its stderr if it fails."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cbir_lightning", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip().splitlines()[-error_lines:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds


def run(command: str, config: str, root: Path, extra: list[str], work: Path) -> dict:
    """One README command in a fresh process: ``{"command", "seconds", metrics...}``."""
    args = [command, "--config", str(REPO / "configs" / f"{config}.yaml"), "--data.root", str(root), *extra]
    result, seconds = timed_json(args, work)
    return {
        "command": "cbir-lightning " + " ".join(args[:3]),
        "seconds": round(seconds, 1),
        **{k: result[k] for k in KEYS if k in result},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--data", default=str(REPO / "data"), help="folder holding the data sets")
    parser.add_argument("--work", default=str(REPO / "runs" / "quality"), help="where runs write")
    parser.add_argument("--pretrained-only", action="store_true", help="skip the fine-tuning rows")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="overrides for every command")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        for command, config in ROWS[name]:
            if args.pretrained_only and command == "fit":
                continue
            row = run(command, config, Path(args.data) / ROOTS[name], args.extra, work)
            print(json.dumps({"benchmark": "quality", "set": name, "config": config, **row}), flush=True)


if __name__ == "__main__":
    main()
