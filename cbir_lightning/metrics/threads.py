"""CPU work side by side on single-threaded workers.

Many small torch ops, each split over all cores, wait for every core at every op: when another process
holds a core that stalls badly. The engine instead gives each worker thread whole chunks of rows and
lets every op run on the thread that calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded():
    """Run torch ops on the calling thread only (restores the thread count afterwards)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def parallel_map(fn: Callable, items: Iterable, workers: int) -> list:
    """``[fn(item) for item in items]`` on ``workers`` threads, torch single-threaded, with the caller's
    grad / inference mode (thread-local in torch) in every worker."""
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def call(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    with single_threaded(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(call, items))
