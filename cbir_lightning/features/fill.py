"""Filling a :class:`~cbir_lightning.features.store.FeatureStore`: the views it lacks, computed by a frozen
trunk through the toolkit's one embedding route (:func:`~cbir_lightning.inference.embed_dataset`), a shard
at a time, so memory stays bounded and a killed build keeps every shard it finished.

Under DDP rank 0 lists the missing views and sends the list to every rank; each computes its share
(``missing[rank::world]``) and writes its own shards; all ranks then wait for each other, so each one reads
a complete store afterwards.
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
    embed=None,
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
        embed: what computes ``trunk`` on a batch (default the module itself; e.g. an
            :class:`~cbir_lightning.features.onnx_trunk.OnnxTrunk` of it).
        names: the items' content names (:func:`~cbir_lightning.features.views.identities`).
        shard_size: views per shard file (and per transaction).
    """
    position = {view_name(name, k): (i, k) for i, name in enumerate(names) for k in range(views + 1)}
    grouped = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if grouped else (0, 1)
    missing = store.missing(list(position)) if rank == 0 else None
    if world > 1:  # one list for every rank (another rank may already be writing when this one reads)
        shared = [missing]
        dist.broadcast_object_list(shared, src=0)
        missing = shared[0]
    mine = missing[rank::world]
    hidden = not progress or rank != 0 or not missing
    with tqdm(total=len(missing), desc=f"feature cache: {what}", unit="view", disable=hidden) as bar:
        for start in range(0, len(mine), shard_size):  # the bar is closed before an error goes up
            chunk = mine[start : start + shard_size]
            images = ViewImages(source, names, [position[item] for item in chunk])
            values = embed_dataset(
                trunk,
                images,
                embed=embed or trunk,
                batch_size=batch_size,
                num_workers=num_workers,
                distributed=False,
            )
            store.add(chunk, values.to(dtype).cpu().numpy())
            bar.update(len(chunk) * world)
    if world > 1:
        dist.barrier()
    return len(missing)
