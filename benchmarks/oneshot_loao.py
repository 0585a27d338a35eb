"""Leave-one-alphabet-out (LOAO) one-shot accuracy of an Omniglot training config.

For each held-out alphabet and seed, runs ``cbir-lightning fit --config CONFIG`` with
``--data.init_args.val_alphabets [ALPHABET]`` (training on every other alphabet of the config's sets) and
prints one JSON line per fold: the held-out 20-way accuracy (400 fixed trials inside the alphabet) and mAP
of the LAST epoch (the fixed schedule a final model would use: ``oneshot_20way``, ``mAP``), of the best
epoch by validation mAP (``best_oneshot_20way``, optimistic: chosen on the held-out alphabet), and the
per-epoch curve (``curve``: 20-way accuracy after each epoch, from the fold's ``metrics.jsonl``). With
``--runs`` the last checkpoint is also scored on Lake's runs (``lake_runs``).

With ``--ensemble`` and two or more seeds, each alphabet also gets an ``ensemble`` line: the seeds' last
checkpoints scored alone and together (``cbir-lightning oneshot --ckpt '[...]'``, mean score) on 20
Lake-format runs drawn from the held-out alphabet (``cbir-lightning make-runs``; 400 trials). With
``--test_time_scales 1.0 0.9 1.1`` each is scored with those test-time zooms as well (``single_tta``,
``together_tta``).

The last line is the summary: mean and standard deviation over all folds (alphabets x seeds) of each
metric, the mean per-epoch curve (to choose an epoch count), and the ensembles' mean and std over
alphabets. This chooses a recipe and an epoch count without a test set: a config that trains on all
alphabets (``configs/omniglot_best.yaml``) is justified by these numbers, not by Lake's runs.

    .venv/bin/python benchmarks/oneshot_loao.py --config configs/omniglot_koch.yaml \\
        [--alphabets Korean Sanskrit] [--seeds 0 1] [--jobs 2] [--ensemble] [--out runs/loao] \\
        [--runs all_runs.zip] [-- --trainer.max_epochs 3 ...]

Alphabets default to those of the small background sets with at least 20 characters (Tagalog has 17,
too few for 20-way trials; it stays in every fold's training set). ``--jobs``: folds trained at once,
each with ``cores / jobs`` threads (two one-thread folds train faster than one two-thread fold on 2
cores). ``--reuse``: folds already finished in ``--out`` are scored again without training (e.g. with
``--ensemble --test_time_scales`` added later). Arguments after ``--`` go to ``fit``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cbir_lightning.callbacks.metrics_history import read_history

ALPHABETS = ["Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit"]
METRICS = ("oneshot_20way", "mAP", "best_oneshot_20way", "lake_runs")


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in the output:\n{text[-2000:]}")


def run(args: list[str], threads: int | None = None) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, "-m", "cbir_lightning", *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cbir-lightning {args[0]} failed:\n{proc.stderr[-3000:]}")
    return last_json(proc.stdout)


def fold(args: argparse.Namespace, alphabet: str, seed: int, extra: list[str], threads: int) -> dict:
    folder = Path(args.out) / f"{alphabet}_seed{seed}"
    fit = [
        "fit", "--config", args.config, "--data.init_args.val_alphabets", f"[{alphabet}]",
        "--seed_everything", str(seed), "--trainer.default_root_dir", str(folder), *extra,
    ]  # fmt: skip
    done = folder / "fit.json"  # the fit's JSON line, written when it finished
    if args.reuse and done.is_file():
        best = json.loads(done.read_text())
    else:
        best = run(fit, threads)
        done.write_text(json.dumps(best))
    epochs = read_history(folder / "metrics.jsonl")
    last = folder / "checkpoints" / "last.ckpt"
    line = {"config": args.config, "alphabet": alphabet, "seed": seed, "checkpoint": str(last.resolve())}
    line.update({k: epochs[-1][k] for k in ("oneshot_20way", "mAP")})
    line["best_oneshot_20way"] = best["oneshot_20way"]
    line["curve"] = [row["oneshot_20way"] for row in epochs]
    if args.runs is not None:
        line["lake_runs"] = run(["oneshot", "--ckpt", str(last), "--runs", args.runs], threads)["accuracy"]
    return line


def ensemble(args: argparse.Namespace, alphabet: str, folds: list[dict], sources: list[str]) -> dict:
    runs = Path(args.out) / "heldout_runs" / alphabet
    if not runs.exists():
        run(
            [
                "make-runs",
                "--sources",
                json.dumps(sources),
                "--alphabets",
                f"[{alphabet}]",
                "--out",
                str(runs),
            ]
        )
    ckpts = [f["checkpoint"] for f in folds]
    line: dict = {"ensemble": alphabet, "seeds": [f["seed"] for f in folds]}
    variants = [("", [])]
    if args.test_time_scales:
        variants.append(("_tta", ["--test_time_scales", json.dumps(args.test_time_scales)]))
    for suffix, zooms in variants:
        scored = [run(["oneshot", "--ckpt", c, "--runs", str(runs), *zooms])["accuracy"] for c in ckpts]
        line[f"single{suffix}"] = scored
        line[f"together{suffix}"] = run(
            ["oneshot", "--ckpt", json.dumps(ckpts), "--runs", str(runs), *zooms]
        )["accuracy"]
    return line


def summary(lines: list[dict], ensembles: list[dict]) -> dict:
    out: dict = {"folds": len(lines)}
    for key in METRICS:
        values = [line[key] for line in lines if key in line]
        if values:
            out[key] = round(statistics.mean(values), 4)
            out[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    curves = [line["curve"] for line in lines]
    if curves and len({len(c) for c in curves}) == 1:
        out["curve"] = [round(statistics.mean(epoch), 4) for epoch in zip(*curves, strict=True)]
    for key in ("single", "together", "single_tta", "together_tta"):
        values = [
            e[key] if isinstance(e[key], float) else statistics.mean(e[key]) for e in ensembles if key in e
        ]
        if values:
            out[f"ensemble_{key}"] = round(statistics.mean(values), 4)
            out[f"ensemble_{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
    return out


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--alphabets", nargs="+", default=ALPHABETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--ensemble", action="store_true", help="score each alphabet's seeds together")
    parser.add_argument("--sources", nargs="+", default=None, help="Omniglot zips/folders for --ensemble")
    parser.add_argument(
        "--test_time_scales", nargs="+", type=float, default=None, help="also with these zooms"
    )
    parser.add_argument("--out", default="runs/loao")
    parser.add_argument("--reuse", action="store_true", help="score finished folds in --out again, no refit")
    parser.add_argument(
        "--runs", default=None, help="Lake's all_runs folder or zip: also score each fold on it"
    )
    args = parser.parse_args(own)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    plan = [(alphabet, seed) for seed in args.seeds for alphabet in args.alphabets]
    lines = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda p: fold(args, *p, extra, threads), plan):
            lines.append(line)
            print(json.dumps(line), flush=True)
    ensembles = []
    if args.ensemble and len(args.seeds) > 1:
        root = Path(
            extra[extra.index("--data.init_args.root") + 1]
            if "--data.init_args.root" in extra
            else "data/omniglot"
        )
        sources = args.sources or [str(p) for p in sorted(root.glob("images_background_small*.zip"))]
        for alphabet in args.alphabets:
            ensembles.append(
                ensemble(args, alphabet, [x for x in lines if x["alphabet"] == alphabet], sources)
            )
            print(json.dumps(ensembles[-1]), flush=True)
    print(json.dumps({"config": args.config, **summary(lines, ensembles)}), flush=True)


if __name__ == "__main__":
    main()
