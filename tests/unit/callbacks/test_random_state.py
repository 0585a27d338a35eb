"""``RandomState``: the global generators' states survive a checkpoint (saved, reloaded with
``weights_only``, restored)."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from cbir_lightning.callbacks.random_state import RandomState


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), np.random.randn(), float(torch.rand(()))


def test_restored_generators_draw_what_they_drew_after_the_save():
    np.random.randn()  # NumPy's cached Gaussian is part of the state
    buffer = io.BytesIO()
    torch.save(RandomState().state_dict(), buffer)
    expected = _draw()
    _draw()
    buffer.seek(0)
    RandomState().load_state_dict(torch.load(buffer, weights_only=True))
    assert _draw() == expected
