"""Benchmarks stay runnable (their numbers are measured by running them, not here)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
from helpers.paths import REPO


def test_lightning_overhead_prints_a_json_line(omniglot_root):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "lightning_overhead.py"),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--processes",
            "2",
            "--root",
            str(omniglot_root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "lightning_overhead"
    assert len(result["rounds_lightning"]) == len(result["rounds_plain"]) == 2  # one round per process
    assert result["lightning_pairs_per_s"] > 0 and result["plain_pairs_per_s"] > 0
    assert abs(result["best_ratio"] - result["lightning_pairs_per_s"] / result["plain_pairs_per_s"]) < 1e-3
    pairs = zip(result["rounds_lightning"], result["rounds_plain"], strict=True)
    assert abs(result["ratio"] - statistics.median(o / p for o, p in pairs)) < 1e-3


def test_mining_benchmark_prints_a_json_line():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "mining.py"),
            "--images",
            "24",
            "--clusters",
            "6",
            "--query-size",
            "6",
            "--pool-size",
            "12",
            "--neg-num",
            "2",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "mining" and result["identical_tuples"] is True
    assert result["ratio"] == pytest.approx(result["ours_s"] / result["cirtorch_s"], rel=1e-2)


def test_search_benchmark_prints_a_json_line():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "search.py"),
            "--images",
            "4",
            "--database",
            "2000",
            "--queries",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "search" and result["database"] == 2000
    assert result["index_images_per_s"] > 0 and result["faiss_p95_ms"] > 0
    assert result["ratio_p95"] == pytest.approx(result["ours_p95_ms"] / result["faiss_p95_ms"], rel=1e-2)


def test_hamming_benchmark_prints_a_json_line():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "hamming.py"),
            "--database",
            "3000",
            "--queries",
            "50",
            "--bits",
            "16",
            "--k",
            "10",
            "--map-queries",
            "20",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "hamming" and result["database"] == 3000
    assert result["memory_ratio"] == 32.0 and result["packed_bytes"] == 3000 * 2
    assert result["speedup"] == pytest.approx(result["float_s"] / result["hamming_s"], rel=1e-3)
    assert 0 < result["hamming_mAP"] <= 1 and 0 < result["float_mAP"] <= 1


def test_quality_prints_a_json_line_per_command(tmp_path):
    from helpers.paths import SHARED_DATA

    if not (SHARED_DATA / "wikiart_pd" / "labels.tsv").is_file():
        import pytest

        pytest.skip("no shared paintings")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "quality.py"),
            "--sets",
            "wikiart",
            "--data",
            str(SHARED_DATA),
            "--work",
            str(tmp_path),
            "--pretrained-only",
            "--extra",
            "--data.init_args.image_size",
            "64",
            "--data.init_args.num_workers",
            "0",
            "--trainer.logger",
            "false",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["benchmark"] == "quality" and row["config"] == "wikiart_pretrained"
    assert row["num_queries"] > 200 and 0 < row["mAP"] <= 1 and row["seconds"] > 0
    assert row["command"].startswith("cbir-lightning evaluate --config")


def test_index_scale_prints_a_json_line_per_size():
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "index_scale.py"),
            "--sizes",
            "1500",
            "3000",
            "--min-size",
            "1000",
            "--dim",
            "16",
            "--queries",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["size"] for r in rows] == [1500, 3000] and all(r["benchmark"] == "index_scale" for r in rows)
    for r in rows:
        assert r["approximate_kind"] == "hnsw" and list(r["approximate_params"]) == ["ef_search"]
        assert r["tuning_recall"] >= 0.95 and 0 < r["recall@10"] <= 1
        assert r["speedup_p95"] == pytest.approx(r["exact_p95_ms"] / r["approximate_p95_ms"], rel=1e-2)
        assert r["speedup_mean"] == pytest.approx(r["exact_mean_ms"] / r["approximate_mean_ms"], rel=1e-2)
        assert r["exact_index_bytes"] >= r["size"] * 16 * 4 and r["approximate_build_s"] > 0


def test_oneshot_loao_prints_a_line_per_fold_and_the_summary(omniglot_root, tmp_path):
    from helpers.cli import TINY_ARGS

    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "oneshot_loao.py"),
            "--config",
            str(REPO / "configs" / "omniglot_koch.yaml"),
            "--alphabets",
            "Greek",
            "Korean",
            "--out",
            str(tmp_path / "loao"),
            "--",
            "--data.init_args.root",
            str(omniglot_root),
            *TINY_ARGS,
            "--data.init_args.epoch_length",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    folds, total = lines[:-1], lines[-1]
    assert [f["alphabet"] for f in folds] == ["Greek", "Korean"] and total["folds"] == 2
    values = [f["oneshot_20way"] for f in folds]
    assert abs(total["oneshot_20way"] - statistics.mean(values)) < 1e-3
    assert abs(total["oneshot_20way_std"] - statistics.stdev(values)) < 1e-3
    assert "Greek_seed0" in folds[0]["checkpoint"]
