"""Benchmarks stay runnable (their numbers are measured by running them, not here)."""

from __future__ import annotations

import pickle
import statistics

import pytest
from helpers.benchmarks import run_benchmark, run_benchmark_lines
from helpers.paths import REPO, SHARED_DATA


def test_lightning_overhead_prints_a_json_line(omniglot_root):
    args = "--steps 2 --warmup 1 --repeats 1 --processes 2".split()
    result = run_benchmark("lightning_overhead.py", *args, "--root", omniglot_root)
    assert result["benchmark"] == "lightning_overhead"
    assert len(result["rounds_lightning"]) == len(result["rounds_plain"]) == 2  # one round per process
    assert result["lightning_pairs_per_s"] > 0 and result["plain_pairs_per_s"] > 0
    assert abs(result["best_ratio"] - result["lightning_pairs_per_s"] / result["plain_pairs_per_s"]) < 1e-3
    pairs = zip(result["rounds_lightning"], result["rounds_plain"], strict=True)
    assert abs(result["ratio"] - statistics.median(o / p for o, p in pairs)) < 1e-3


def test_mining_benchmark_prints_a_json_line():
    result = run_benchmark(
        "mining.py", *"--images 24 --clusters 6 --query-size 6 --pool-size 12 --neg-num 2 --workers 0".split()
    )
    assert result["benchmark"] == "mining" and result["identical_tuples"] is True
    assert result["ratio"] == pytest.approx(result["ours_s"] / result["cirtorch_s"], rel=1e-2)


def test_search_benchmark_prints_a_json_line():
    result = run_benchmark("search.py", "--images", "4", "--database", "2000", "--queries", "20")
    assert result["benchmark"] == "search" and result["database"] == 2000
    assert result["index_images_per_s"] > 0 and result["faiss_p95_ms"] > 0
    assert result["ratio_p95"] == pytest.approx(result["ours_p95_ms"] / result["faiss_p95_ms"], rel=1e-2)


def test_hamming_benchmark_prints_a_json_line():
    result = run_benchmark(
        "hamming.py", *"--database 3000 --queries 50 --bits 16 --k 10 --map-queries 20 --repeats 1".split()
    )
    assert result["benchmark"] == "hamming" and result["database"] == 3000
    assert result["memory_ratio"] == 32.0 and result["packed_bytes"] == 3000 * 2
    assert result["speedup"] == pytest.approx(result["float_s"] / result["hamming_s"], rel=1e-3)
    assert 0 < result["hamming_mAP"] <= 1 and 0 < result["float_mAP"] <= 1


def test_quality_prints_a_json_line_per_command(tmp_path):
    if not (SHARED_DATA / "wikiart_pd" / "labels.tsv").is_file():
        pytest.skip("no shared paintings")
    row = run_benchmark(
        "quality.py", "--sets", "wikiart", "--data", SHARED_DATA, "--work", tmp_path, "--pretrained-only",
        "--extra", "--data.init_args.image_size", "64", "--data.init_args.num_workers", "0",
        "--trainer.logger", "false", timeout=600,
    )  # fmt: skip
    assert row["benchmark"] == "quality" and row["config"] == "wikiart_pretrained"
    assert row["num_queries"] > 200 and 0 < row["mAP"] <= 1 and row["seconds"] > 0
    assert row["command"].startswith("cbir-lightning evaluate --config")


def test_index_scale_prints_a_json_line_per_size():
    rows = run_benchmark_lines(
        "index_scale.py", "--sizes", "1500", "3000", "--min-size", "1000", "--dim", "16", "--queries", "30"
    )
    assert [r["size"] for r in rows] == [1500, 3000] and all(r["benchmark"] == "index_scale" for r in rows)
    for r in rows:
        assert r["approximate_kind"] == "hnsw" and list(r["approximate_params"]) == ["ef_search"]
        assert r["tuning_recall"] >= 0.95 and 0 < r["recall@10"] <= 1
        assert r["speedup_p95"] == pytest.approx(r["exact_p95_ms"] / r["approximate_p95_ms"], rel=1e-2)
        assert r["speedup_mean"] == pytest.approx(r["exact_mean_ms"] / r["approximate_mean_ms"], rel=1e-2)
        assert r["exact_index_bytes"] >= r["size"] * 16 * 4 and r["approximate_build_s"] > 0


def test_rerank_map_prints_emh_map_per_reranker(tmp_path):
    gnd = [
        {
            "easy": list(range(8 * q, 8 * q + 4)),
            "hard": list(range(8 * q + 4, 8 * q + 7)),
            "junk": [8 * q + 7],
        }
        for q in range(6)
    ]
    data = {"imlist": [f"im{i}" for i in range(300)], "qimlist": [f"q{q}" for q in range(6)], "gnd": gnd}
    (tmp_path / "gnd_tiny.pkl").write_bytes(pickle.dumps(data, protocol=4))
    result = run_benchmark("rerank_map.py", "--gnd", tmp_path / "gnd_tiny.pkl", "--dim", "32")
    assert result["benchmark"] == "rerank_map" and result["descriptors"] == "synthetic"
    assert set(result) >= {"none", "aqe", "dba", "diffusion"}
    for name in ("none", "aqe", "dba", "diffusion"):
        assert set(result[name]) == {"easy", "medium", "hard"}
        assert all(0 < v <= 1 for v in result[name].values())


@pytest.mark.slow
def test_oneshot_loao_prints_a_line_per_fold_and_the_summary(omniglot_root, tmp_path):
    from helpers.cli import TINY_ARGS

    lines = run_benchmark_lines(
        "oneshot_loao.py", "--config", REPO / "configs" / "omniglot_koch.yaml",
        "--alphabets", "Greek", "--seeds", "0", "1", "--jobs", "2", "--out", tmp_path / "loao",
        "--ensemble", "--test_time_scales", "1.0", "0.8",
        "--", "--data.init_args.root", omniglot_root, *TINY_ARGS,
        "--data.init_args.epoch_length", "1", "--trainer.max_epochs", "2", cwd=tmp_path, timeout=900,
    )  # fmt: skip
    folds, ensembles, total = lines[:2], lines[2:3], lines[-1]
    assert [(f["alphabet"], f["seed"]) for f in folds] == [("Greek", 0), ("Greek", 1)] and total["folds"] == 2
    for fold in folds:  # the last epoch's held-out accuracy (the fixed schedule), and the per-epoch curve
        assert len(fold["curve"]) == 2 and fold["oneshot_20way"] == fold["curve"][-1]
        assert fold["checkpoint"].endswith(f"{fold['alphabet']}_seed{fold['seed']}/checkpoints/last.ckpt")
    values = [f["oneshot_20way"] for f in folds]
    assert abs(total["oneshot_20way"] - statistics.mean(values)) < 1e-3
    assert abs(total["oneshot_20way_std"] - statistics.stdev(values)) < 1e-3
    for epoch in range(2):
        assert abs(total["curve"][epoch] - statistics.mean(f["curve"][epoch] for f in folds)) < 1e-3
    assert [e["ensemble"] for e in ensembles] == ["Greek"] and len(lines) == 4
    for line in ensembles:
        assert line["seeds"] == [0, 1] and len(line["single"]) == len(line["single_tta"]) == 2
        assert all(
            0 <= v <= 1
            for v in [*line["single"], *line["single_tta"], line["together"], line["together_tta"]]
        )
    assert abs(total["ensemble_together"] - statistics.mean(e["together"] for e in ensembles)) < 1e-3
