"""Collect per-batch evaluation outputs and gather them across DDP ranks without duplicates."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from cbir_lightning.inference import in_index_order


def gather_unique(
    pl_module: pl.LightningModule, parts: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Concatenate ``parts`` (dicts with ``embeddings``, ``labels``, ``indices``), all-gather over ranks
    and keep one row per dataset index, sorted by index.

    ``DistributedSampler`` pads the last shard with repeats of the first samples; keeping each index once
    makes every rank see exactly the single-process set, so metrics are exact under DDP.
    """
    local = {key: torch.cat([p[key] for p in parts]) for key in ("embeddings", "labels", "indices")}
    if pl_module.trainer.world_size > 1:
        local = {key: pl_module.all_gather(value.to(pl_module.device)) for key, value in local.items()}
        local = {key: value.flatten(0, 1).cpu() for key, value in local.items()}
    keep = in_index_order(local["indices"])
    return {key: value[keep] for key, value in local.items()}
