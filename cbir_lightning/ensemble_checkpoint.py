"""Pack finished ``SiameseModule`` checkpoints (e.g. one recipe trained with several seeds) into one
checkpoint whose net is an :class:`~cbir_lightning.models.ensemble_net.EnsembleNet` of them: its score is
the members' mean score, and every command that takes a checkpoint (``oneshot``, ``validate``, ``index``,
``search``, ``export``) uses it as it uses one model."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch

from cbir_lightning.atomic import atomic_file
from cbir_lightning.checkpoints import Checkpoint, read_checkpoint
from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import RECORD_KEY
from cbir_lightning.models.siamese_module import SiameseModule

ENSEMBLE_NET = "cbir_lightning.models.EnsembleNet"


def _member_net(ckpt: Checkpoint) -> dict:
    if not issubclass(ckpt.module_class, SiameseModule):
        raise CbirError(
            f"{ckpt.path} holds a {ckpt.module_class.__name__}; an ensemble packs SiameseModule checkpoints"
        )
    net = ckpt.hyper_parameters.get("net")
    if not (isinstance(net, dict) and net.get("class_path")):
        raise CbirError(f"{ckpt.path} records no net class; pack checkpoints written by `cbir-lightning fit`")
    return net


def _check_alike(first: Checkpoint, other: Checkpoint) -> None:
    """The members must read images alike: the same DataModule class and image size, the same zooms."""
    for what, a, b in (
        ("DataModule", first.datamodule_args.get("_class_path"), other.datamodule_args.get("_class_path")),
        ("image_size", first.datamodule_args.get("image_size"), other.datamodule_args.get("image_size")),
        (
            "test_time_scales",
            first.hyper_parameters.get("test_time_scales"),
            other.hyper_parameters.get("test_time_scales"),
        ),
    ):
        if a != b:
            raise CbirError(
                f"{other.path} has {what} {b!r} but {first.path} has {a!r}; pack checkpoints of one recipe"
            )


def pack_ensemble(ckpts: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Write ``out``: one checkpoint of ``SiameseModule(net=EnsembleNet(members))`` with each member's
    weights, hyperparameters (the first checkpoint's, the net replaced) and DataModule record (the
    first's); ``ensemble_members`` lists each member's path (relative to ``out``'s folder) and identity
    hashes. Written atomically; an existing ``out`` is replaced only with ``overwrite``."""
    if len(ckpts) < 2:
        raise CbirError("an ensemble needs at least two checkpoints: --ckpt '[a.ckpt, b.ckpt]'")
    out = Path(out)
    if out.exists() and not overwrite:
        raise CbirError(f"{out} exists; pass --overwrite true to replace it, or another --out")
    members = [read_checkpoint(p) for p in ckpts]
    nets = [_member_net(m) for m in members]
    first = members[0]
    for other in members[1:]:
        _check_alike(first, other)
    state = {k: v for k, v in first.contents.get("state_dict", {}).items() if not k.startswith("net.")}
    for i, member in enumerate(members):
        for key, value in member.contents["state_dict"].items():
            if key.startswith("net."):
                state[f"net.members.{i}.{key[4:]}"] = value
    hyper_parameters = {
        **first.hyper_parameters,
        "net": {"class_path": ENSEMBLE_NET, "init_args": {"members": nets}},
    }
    contents = {
        "epoch": first.contents.get("epoch", 0),
        "global_step": first.contents.get("global_step", 0),
        "pytorch-lightning_version": first.contents.get("pytorch-lightning_version") or pl.__version__,
        "state_dict": state,
        "hyper_parameters": hyper_parameters,
        "datamodule_hyper_parameters": dict(first.datamodule_args),
        "ensemble_members": [{"path": os.path.relpath(m.path, out.parent), **m.identity} for m in members],
    }
    if RECORD_KEY in first.contents:  # the members read images alike: the first's preprocessing
        contents[RECORD_KEY] = first.contents[RECORD_KEY]
    with atomic_file(out) as tmp:
        torch.save(contents, tmp)
    return out
