"""The evaluation benchmarks stay runnable at a tiny size (their numbers come from running them)."""

from __future__ import annotations

import pytest
from helpers.benchmarks import run_benchmark as _run


def test_map_eval_prints_a_json_line():
    result = _run("map_eval.py", "--queries", "60", "--database", "900", "--classes", "30", "--repeats", "1")
    assert result["benchmark"] == "map_eval" and result["baseline_queries"] == 60
    assert result["ours_mAP"] == pytest.approx(result["pml_mAP"], abs=1e-6)
    assert result["speedup_vs_pml"] > 0 and result["speedup_vs_torchmetrics"] > 0


def test_knn_prints_a_json_line():
    pytest.importorskip("faiss")
    result = _run("knn.py", "--queries", "50", "--database", "2000", "--classes", "20", "--repeats", "1")
    assert result["benchmark"] == "knn" and result["exact_backends_identical"] is True
    assert 0.0 < result["ivf_recall@10"] <= 1.0 and 0.0 < result["hnsw_recall@10"] <= 1.0
