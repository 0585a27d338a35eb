"""Filling a :class:`~cbir_lightning.features.store.FeatureStore`: the views it lacks, computed by a frozen
trunk through the toolkit's one embedding route (:func:`~cbir_lightning.inference.embed_dataset`), a shard
at a time, so memory stays bounded and a killed build keeps every shard it finished.

Under DDP every rank computes its share of the missing views (``missing[rank::world]``) and writes its own
shards; all ranks then wait for each other, so each one reads a complete store afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cbir_lightning.contracts import ViewSource
from cbir_lightning.features.store import FeatureStore
from cbir_lightning.features.views import ViewImages, view_name
from cbir_lightning.inference import embed_dataset


def fill_store(
    store: FeatureStore,
    trunk: nn.Module,
    source: ViewSource,
    names: Sequence[str],
    views: int,
    *,
    dtype: torch.dtype = torch.float16,
    batch_size: int = 32,
    num_workers: int = 0,
    shard_size: int = 512,
    progress: bool = True,
    what: str = "views",
) -> int:
    """Compute and store the views ``0..views`` of every item that ``store`` lacks; how many were missing.

    Args:
        trunk: the frozen part of a model (eval mode, no gradient): image batches -> features.
        names: the items' content names (:func:`~cbir_lightning.features.views.identities`).
        shard_size: views per shard file (and per transaction).
    """
    position = {view_name(name, k): (i, k) for i, name in enumerate(names) for k in range(views + 1)}
    missing = store.missing(list(position))
    grouped = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if grouped else (0, 1)
    mine = missing[rank::world]
    bar = tqdm(
        total=len(missing),
        desc=f"feature cache: {what}",
        unit="view",
        disable=not progress or rank != 0 or not missing,
    )
    for start in range(0, len(mine), shard_size):
        chunk = mine[start : start + shard_size]
        images = ViewImages(source, names, [position[item] for item in chunk])
        values = embed_dataset(
            trunk, images, embed=trunk, batch_size=batch_size, num_workers=num_workers, distributed=False
        )
        store.add(chunk, values.to(dtype).cpu().numpy())
        bar.update(len(chunk) * world)
    bar.close()
    if world > 1:
        dist.barrier()
    return len(missing)
