"""Embedding a dataset: the toolkit's one inference path outside Lightning's loops.

``validate`` / ``test`` / ``predict`` (and ``evaluate --config``, which is ``validate``) embed batch by
batch in ``EmbeddingModule.validation_step`` & co.; their outputs are put back in dataset order, each item
once, with :func:`in_index_order`. Everything else that embeds a set of images calls :func:`embed_dataset`:
``index`` (checkpoint, model file or ONNX export: ``search/embed.py`` ``embed_files``), the Python API
(``Embedder.embed``), hard-negative mining, whitening fit (``FitWhitening``, ``cbir-lightning whiten``),
the ``LandmarkMetrics`` callback, the feature cache and ``oneshot``. What embeds a batch is the caller's
choice: a module (its ``embed``, or ``embed=``), or anything else with an ``embed`` (an ONNX Runtime
session's: ``OnnxSearchModel``), or a function; the loop, batching, grouping, order and DDP gather are the
same. Training embeds lists of variable-size images with :func:`embed_grouped`
(the training step of tuple batches, with gradients).

Contract of :func:`embed_dataset`:

* eval mode (a module) and no gradient during the call; afterwards every submodule's ``training`` flag
  is what it was (a frozen BatchNorm inside a training model stays frozen);
* images are decoded by a DataLoader (``num_workers``), ``batch_size`` at a time; inside a batch, images
  of equal shape are stacked into one forward pass (:func:`shape_groups`), so variable-size images work
  and a set of one size gives exactly the batches a plain ``DataLoader`` would;
* rows follow ``indices`` (default: every item in order); under an initialised process group (and
  ``distributed=True``) rank ``r`` embeds ``indices[r::world]`` and the rows are all-gathered back into
  that exact order, so every rank ends with the full ``[len(indices), D]`` tensor (and, ``labels=True``,
  the items' labels: ``(image, label)`` items, e.g. -1 for a file that could not be decoded);
* ``progress``: a titled tqdm bar on rank 0 (``index``'s);
* whitening: post-hoc whitening is applied in exactly one place, the model's eval-mode ``embed``
  (``GeMSiameseModule.embed`` with a whitening attached: at validate/test/predict of a checkpoint that has
  ``<ckpt>.whitening.pt`` unless ``apply_whitening_file: false``, or by ``load_module(whitening=True)``).
  This module never applies a whitening itself; ``whitening=False`` sets the attached one aside for the
  call (what a whitening is learnt from: the model's own descriptors).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from cbir_lightning.contracts import EmbeddingModel

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


def _image(item) -> torch.Tensor:
    """An item's image: the item itself (a tensor), or the first of ``(image, label, ...)``."""
    return item if isinstance(item, torch.Tensor) else item[0]


def _label(item) -> int:
    return 0 if isinstance(item, torch.Tensor) else int(item[1])


def _embed_local(
    embed: Embed,
    device: torch.device,
    images: Dataset,
    indices: list[int],
    batch_size: int,
    num_workers: int,
    progress: str | None,
    with_labels: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``embed(images[i])`` for ``i`` in ``indices`` (this process's), and the items' labels (zeros
    unless ``with_labels``)."""
    loader = DataLoader(
        Subset(images, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list
    )
    if progress:
        loader = tqdm(loader, desc=progress, file=sys.stdout, dynamic_ncols=True)
    vectors, labels = [], []
    for batch in loader:
        vectors.append(embed_grouped(lambda x: embed(x.to(device)), [_image(item) for item in batch]))
        labels.append(torch.tensor([_label(item) if with_labels else 0 for item in batch], dtype=torch.long))
    if not vectors:
        return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(vectors), torch.cat(labels).to(vectors[0].device)


def _embedder(model, embed: Embed | None) -> tuple[Embed, torch.device, bool]:
    """``(embed, device, is_module)`` of what :func:`embed_dataset` embeds with: ``embed`` if given, else
    the model's ``embed`` (a module without one, e.g. a frozen trunk, needs ``embed``)."""
    if isinstance(model, nn.Module):
        return embed or model.embed, model_device(model), True
    return embed or getattr(model, "embed", model), torch.device("cpu"), False


def embed_dataset(
    model: nn.Module | EmbeddingModel | Embed,
    images: Dataset,
    indices: torch.Tensor | None = None,
    *,
    embed: Embed | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    distributed: bool = True,
    whitening: bool = True,
    progress: str | None = None,
    labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[len(indices), D]`` (on the model's device) of ``images[i]`` for ``i`` in ``indices``
    (default: all, in order); see the module docstring for the contract.

    Args:
        model: a module (put in eval mode on its device, its modes restored afterwards), or anything
            else with an ``embed(images) -> [n, D]`` (e.g. an ONNX Runtime session's,
            ``OnnxSearchModel``) or such a function itself, run on CPU tensors as it is.
        images: a dataset whose items are image tensors ``[C, H, W]``, or tuples ``(image, label, ...)``
            (an ``int`` label, e.g. -1 for a file that could not be decoded; ``labels=True`` returns them).
        embed: the function of a stacked batch (on the model's device) to apply; default ``model.embed``
            (e.g. ``model.descriptor`` for mining, or a cast ``lambda x: model.embed(x.float() / 255)``).
        distributed: under an initialised process group, shard over the ranks and all-gather (every
            rank must call with the same indices); False: this process embeds everything alone (e.g. on
            rank 0 only).
        whitening: False sets the model's attached post-hoc whitening aside for the call.
        progress: a progress bar (tqdm) with this title, shown by rank 0; None: none.
        labels: return ``(embeddings, labels [len(indices)])``, the items' labels gathered alike.
    """
    indices = torch.arange(len(images)) if indices is None else torch.as_tensor(indices)
    embed, device, is_module = _embedder(model, embed)
    gather = distributed and dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if gather else (0, 1)
    n = len(indices)
    per_rank = -(-n // world)
    shard = indices[rank::world]
    if len(shard) < per_rank:  # pad to equal shard sizes for all_gather; padded rows are dropped
        shard = torch.cat([shard, indices[: per_rank - len(shard)]])
    if is_module:
        context = eval_mode(model), nullcontext() if whitening else whitening_set_aside(model)
    else:
        context = torch.no_grad(), nullcontext()
    with context[0], context[1]:
        local, local_labels = _embed_local(
            embed,
            device,
            images,
            shard.tolist(),
            batch_size,
            num_workers,
            progress if rank == 0 else None,
            labels,
        )
    if world > 1:
        local = _all_gather_rows(local, world, per_rank, n)
    if not labels:
        return local
    return local, _all_gather_rows(local_labels, world, per_rank, n) if world > 1 else local_labels


def _all_gather_rows(local: torch.Tensor, world: int, per_rank: int, n: int) -> torch.Tensor:
    """Every rank's ``local`` (rank ``r`` holds rows ``r, r + world, ...``) back in row order, ``n`` rows."""
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous())
    return torch.stack(parts, 1).reshape(world * per_rank, *local.shape[1:])[:n]
