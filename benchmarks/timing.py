"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import time


def timed(fn, repeats: int = 1):
    """``(best wall-clock seconds over repeats, fn's last result)``."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def significant(x: float, digits: int = 6) -> float:
    """``x`` rounded to ``digits`` significant digits (a ratio recomputed from printed times stays exact)."""
    return float(f"{x:.{digits}g}")
