"""Embedding a dataset: the toolkit's one inference path outside Lightning's loops.

``validate`` / ``test`` / ``predict`` (and ``evaluate --config``, which is ``validate``, and ``index``, which
runs ``trainer.predict``) embed batch by batch in ``EmbeddingModule.validation_step`` & co.; their outputs
are put back in dataset order, each item once, with :func:`in_index_order`. Everything else that embeds a
set of images calls :func:`embed_dataset`: hard-negative mining, whitening fit (``FitWhitening``,
``cbir-lightning whiten``), the ``LandmarkMetrics`` callback and ``oneshot``. Training embeds lists of
variable-size images with :func:`embed_grouped` (``GeMSiameseModule.embed_many``, with gradients).

Contract of :func:`embed_dataset`:

* eval mode and no gradient during the call; afterwards every submodule's ``training`` flag is what it
  was (a frozen BatchNorm inside a training model stays frozen);
* images are decoded by a DataLoader (``num_workers``), ``batch_size`` at a time; inside a batch, images
  of equal shape are stacked into one forward pass (:func:`shape_groups`), so variable-size images work
  and a set of one size gives exactly the batches a plain ``DataLoader`` would;
* rows follow ``indices`` (default: every item in order); under an initialised process group (and
  ``distributed=True``) rank ``r`` embeds ``indices[r::world]`` and the rows are all-gathered back into
  that exact order, so every rank ends with the full ``[len(indices), D]`` tensor;
* whitening: post-hoc whitening is applied in exactly one place, the model's eval-mode ``embed``
  (``GeMSiameseModule.embed`` with a whitening attached: at validate/test/predict of a checkpoint that has
  ``<ckpt>.whitening.pt`` unless ``apply_whitening_file: false``, or by ``load_module(whitening=True)``).
  This module never applies a whitening itself; ``whitening=False`` sets the attached one aside for the
  call (what a whitening is learnt from: the model's own descriptors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

Embed = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients inside the block; each submodule's ``training`` flag
    restored afterwards (also on an exception)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


@contextmanager
def whitening_set_aside(model: nn.Module) -> Iterator[nn.Module]:
    """The model's attached post-hoc whitening (``post_whitening``: GeM's, None for the others)
    removed inside the block."""
    attached = model.post_whitening
    if attached is None:
        yield model
        return
    model.post_whitening = None
    try:
        yield model
    finally:
        model.post_whitening = attached


def shape_groups(images: Sequence[torch.Tensor]) -> list[list[int]]:
    """Positions of ``images`` grouped by tensor shape: groups in order of their shape's first
    appearance, positions ascending inside a group."""
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    return list(groups.values())


def embed_grouped(embed: Embed, images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[N, ...]`` rows ``embed(images[i])``, one ``embed`` call per group of equal-size images
    (:func:`shape_groups`); keeps gradients (training) unless called under ``no_grad``."""
    out: torch.Tensor | None = None
    for members in shape_groups(images):
        embedded = embed(torch.stack([images[i] for i in members]))
        if out is None:
            out = embedded.new_empty(len(images), *embedded.shape[1:])
        out[torch.tensor(members, device=embedded.device)] = embedded
    return out


def in_index_order(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the rows to keep so that they follow the dataset index, each index once (its first
    row): the single-process set from outputs gathered over ranks in any order (DistributedSampler pads
    a shard with repeats of the first items)."""
    order = torch.argsort(indices, stable=True)
    sorted_indices = indices[order]
    first = torch.ones_like(sorted_indices, dtype=torch.bool)
    first[1:] = sorted_indices[1:] != sorted_indices[:-1]
    return order[first]


def model_device(model: nn.Module) -> torch.device:
    """A LightningModule's ``device``, else its first parameter's, else the CPU."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _as_list(batch: list) -> list:
    return batch


class ItemImages(Dataset):
    """The images of a dataset of ``(image, label, index)`` items (``EvalBatch`` items)."""

    def __init__(self, items: Dataset) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i][0]


def _embed_local(
    model: nn.Module, images: Dataset, indices: list[int], embed: Embed, batch_size: int, num_workers: int
) -> torch.Tensor:
    device = model_device(model)
    loader = DataLoader(
        Subset(images, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
    )
    out = [embed_grouped(lambda x: embed(x.to(device)), batch) for batch in loader]
    return torch.cat(out) if out else torch.zeros(0, 0, device=device)


def embed_dataset(
    model: nn.Module,
    images: Dataset,
    indices: torch.Tensor | None = None,
    *,
    embed: Embed | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    distributed: bool = True,
    whitening: bool = True,
) -> torch.Tensor:
    """Embeddings ``[len(indices), D]`` (on the model's device) of ``images[i]`` for ``i`` in ``indices``
    (default: all, in order); see the module docstring for the contract.

    Args:
        model: the model; put in eval mode, its modes restored afterwards.
        images: a dataset whose items are image tensors ``[C, H, W]`` (wrap ``(image, label, index)``
            items in :class:`ItemImages`).
        embed: the function of a stacked batch (on the model's device) to apply; default ``model.embed``
            (e.g. ``model.descriptor`` for mining, or a cast ``lambda x: model.embed(x.float() / 255)``).
        distributed: under an initialised process group, shard over the ranks and all-gather (every
            rank must call with the same indices); False: this process embeds everything alone (e.g. on
            rank 0 only).
        whitening: False sets the model's attached post-hoc whitening aside for the call.
    """
    indices = torch.arange(len(images)) if indices is None else torch.as_tensor(indices)
    embed = embed or model.embed
    gather = distributed and dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if gather else (0, 1)
    n = len(indices)
    per_rank = -(-n // world)
    shard = indices[rank::world]
    if len(shard) < per_rank:  # pad to equal shard sizes for all_gather; padded rows are dropped
        shard = torch.cat([shard, indices[: per_rank - len(shard)]])
    with eval_mode(model), nullcontext() if whitening else whitening_set_aside(model):
        local = _embed_local(model, images, shard.tolist(), embed, batch_size, num_workers)
    if world == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous())
    return torch.stack(parts, 1).reshape(world * per_rank, -1)[:n]
