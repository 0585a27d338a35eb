"""Leave-one-alphabet-out (LOAO) one-shot accuracy of an Omniglot training config.

For each held-out alphabet and seed, runs ``cbir-lightning fit --config CONFIG`` with
``--data.init_args.val_alphabets [ALPHABET]`` (training on every other alphabet of the config's sets),
then prints one JSON line: the alphabet, seed, the best epoch's checkpoint and its validation metrics
(``oneshot_20way``: 400 fixed 20-way trials inside the held-out alphabet; ``mAP``). With ``--runs`` it
also scores that checkpoint on Lake's runs (``cbir-lightning oneshot``). The last line is the summary:
mean and standard deviation over the folds of each metric.

This chooses a recipe and an epoch count without a test set: a config that trains on all alphabets
(``configs/omniglot_best.yaml``) is justified by its LOAO numbers, not by Lake's runs.

    .venv/bin/python benchmarks/oneshot_loao.py --config configs/omniglot_koch.yaml \\
        [--alphabets Korean Sanskrit] [--seeds 0 1] [--out runs/loao] [--runs all_runs.zip] \\
        [-- --trainer.max_epochs 3 ...]

Alphabets default to those of the small background sets with at least 20 characters (Tagalog has 17,
too few for 20-way trials; it stays in every fold's training set). Arguments after ``--`` go to ``fit``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ALPHABETS = ["Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit"]
METRICS = ("oneshot_20way", "mAP", "lake_runs")


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in the output:\n{text[-2000:]}")


def run(args: list[str]) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "cbir_lightning", *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cbir-lightning {args[0]} failed:\n{proc.stderr[-3000:]}")
    return last_json(proc.stdout)


def fold(config: str, alphabet: str, seed: int, out: Path, runs: str | None, extra: list[str]) -> dict:
    folder = out / f"{alphabet}_seed{seed}"
    result = run(
        [
            "fit",
            "--config",
            config,
            "--data.init_args.val_alphabets",
            f"[{alphabet}]",
            "--seed_everything",
            str(seed),
            "--trainer.default_root_dir",
            str(folder),
            *extra,
        ]
    )
    line = {"config": config, "alphabet": alphabet, "seed": seed, "checkpoint": result["checkpoint"]}
    line.update({k: result[k] for k in ("oneshot_20way", "mAP")})
    if runs is not None:
        line["lake_runs"] = run(["oneshot", "--ckpt", result["checkpoint"], "--runs", runs])["accuracy"]
    return line


def summary(lines: list[dict]) -> dict:
    out: dict = {"folds": len(lines)}
    for key in METRICS:
        values = [line[key] for line in lines if key in line]
        if values:
            out[key] = round(statistics.mean(values), 4)
            out[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    return out


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--alphabets", nargs="+", default=ALPHABETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default="runs/loao")
    parser.add_argument(
        "--runs", default=None, help="Lake's all_runs folder or zip: also score each fold on it"
    )
    args = parser.parse_args(own)
    lines = []
    for seed in args.seeds:
        for alphabet in args.alphabets:
            lines.append(fold(args.config, alphabet, seed, Path(args.out), args.runs, extra))
            print(json.dumps(lines[-1]), flush=True)
    print(json.dumps({"config": args.config, **summary(lines)}), flush=True)


if __name__ == "__main__":
    main()
