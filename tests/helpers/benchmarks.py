"""Run a script of ``benchmarks/`` at a tiny size and read the JSON lines it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.paths import REPO


def run_benchmark_lines(script: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> list[dict]:
    """Every JSON line ``benchmarks/<script> args`` prints (stdout), after checking it exited 0."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run_benchmark(script: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> dict:
    """The last JSON line of ``benchmarks/<script> args`` (the result every benchmark ends with)."""
    return run_benchmark_lines(script, *args, cwd=cwd, timeout=timeout)[-1]
