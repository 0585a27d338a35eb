"""``RandomState``: the global random generators (Python's ``random``, NumPy's, torch's CPU and CUDA
generators) in every checkpoint, restored when a ``fit`` resumes from it.

Lightning checkpoints the model, optimizers, schedulers, loops and callbacks, not these generators: after a
resume, whatever draws from them (a miner or loss that samples, dropout, the base seed of a DataLoader's
workers) drew from the freshly seeded state instead of the uninterrupted run's. ``cbir-lightning fit``
adds this callback to every run. Under DDP the checkpoint holds rank 0's states (every rank restores them).
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch


def collect_states() -> dict:
    """The states of the global generators, as tensors and plain numbers (a ``weights_only`` load reads
    them)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "python": {"version": version, "state": torch.tensor(python_state), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_states(states: dict) -> None:
    """Set the global generators to ``states`` (from :func:`collect_states`); CUDA states only where
    this process has as many devices."""
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    npy = states["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["position"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


class RandomState(pl.Callback):
    """Saves the global generators' states with each checkpoint (``state_dict``, taken when the checkpoint
    is written) and restores them when a run resumes from one (``load_state_dict``), so the resumed run
    draws the same numbers as the uninterrupted one."""

    def state_dict(self) -> dict:
        return collect_states()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            restore_states(state_dict)
