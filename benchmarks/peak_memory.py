"""Peak resident memory of a block of code, sampled from /proc (Linux) every 2 ms by a thread."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes() -> int:
    """RSS of this process and its descendants (Milvus Lite runs its engine in a child process)."""
    import psutil  # only for the tree: wandb's dependency, present in the dev environment

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so the next measurement starts clean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """``with PeakMemory() as peak: ...``; then ``peak.bytes`` is the largest RSS growth seen inside."""

    def __init__(self, interval: float = 0.002, tree: bool = False) -> None:
        self.interval, self.bytes = (max(interval, 0.01) if tree else interval), 0
        self.rss = tree_rss_bytes if tree else rss_bytes

    def __enter__(self) -> PeakMemory:
        release_freed_memory()
        self.start = self.rss()
        self._peak, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.rss())
        self.bytes = self._peak - self.start
