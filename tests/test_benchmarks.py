"""Benchmarks stay runnable (their numbers are measured by running them, not here)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


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
    assert result["lightning_pairs_per_s"] > 0 and result["plain_pairs_per_s"] > 0
    assert abs(result["ratio"] - result["lightning_pairs_per_s"] / result["plain_pairs_per_s"]) < 1e-3
