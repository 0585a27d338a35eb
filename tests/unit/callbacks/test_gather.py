"""gather_unique: the per-process validation outputs are joined without DistributedSampler's padding."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from cbir_lightning.callbacks.gather import gather_unique


def test_gather_unique_drops_sampler_padding():
    module = SimpleNamespace(trainer=SimpleNamespace(world_size=1))
    parts = [
        {
            "embeddings": torch.tensor([[2.0], [0.0]]),
            "labels": torch.tensor([1, 0]),
            "indices": torch.tensor([2, 0]),
        },
        {
            "embeddings": torch.tensor([[1.0], [0.0]]),
            "labels": torch.tensor([0, 0]),
            "indices": torch.tensor([1, 0]),
        },
    ]
    out = gather_unique(module, parts)
    assert out["indices"].tolist() == [0, 1, 2]
    assert out["embeddings"].flatten().tolist() == [0.0, 1.0, 2.0]
    assert out["labels"].tolist() == [0, 0, 1]
