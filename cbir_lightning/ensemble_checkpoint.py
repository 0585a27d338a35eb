"""Pack finished ``SiameseModule`` checkpoints or model files (e.g. one recipe trained with several
seeds) into one checkpoint whose net is an :class:`~cbir_lightning.models.ensemble_net.EnsembleNet` of
them: its score is the members' mean score, and every command that takes a checkpoint (``oneshot``,
``validate``, ``index``, ``search``, ``export``) uses it as it uses one model."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch

from cbir_lightning.atomic import atomic_file, file_target
from cbir_lightning.checkpoints import Checkpoint, read_checkpoint
from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import RECORD_KEY, ModelFile, checkpoint_preprocess, is_model_file, saved_with
from cbir_lightning.models.siamese_module import SiameseModule

ENSEMBLE_NET = "cbir_lightning.models.EnsembleNet"
MEMBERS_KEY = "ensemble_members"  # what marks an ensemble checkpoint (each member's path and identity)


def _read_member(path: str | Path) -> Checkpoint:
    """A member: a ``fit`` checkpoint, or a model file's module part with its preprocessing. A model file
    holding a whitening is refused: the ensemble scores its members' unwhitened embeddings."""
    if not is_model_file(path):
        return read_checkpoint(path)
    model = ModelFile.load(path)
    if model.whitening is not None:
        raise CbirError(
            f"{path} holds a whitening; an ensemble scores unwhitened members: pack their checkpoints "
            "or model files written without one"
        )
    return model.checkpoint()


def _member_net(ckpt: Checkpoint) -> dict:
    if not issubclass(ckpt.module_class, SiameseModule):
        raise CbirError(
            f"{ckpt.path} holds a {ckpt.module_class.__name__}; an ensemble packs SiameseModule checkpoints"
        )
    net = ckpt.hyper_parameters.get("net")
    if not (isinstance(net, dict) and net.get("class_path")):
        raise CbirError(f"{ckpt.path} records no net class; pack checkpoints written by `cbir-lightning fit`")
    return net


def _check_alike(first: Checkpoint, other: Checkpoint, first_spec: dict, other_spec: dict) -> None:
    """The members must read images alike: the same preprocessing (``*_spec``: mode, resize, size,
    normalisation) and the same test-time zooms."""
    for what, a, b in (
        ("preprocessing", first_spec, other_spec),
        (
            "test_time_scales",
            first.hyper_parameters.get("test_time_scales"),
            other.hyper_parameters.get("test_time_scales"),
        ),
    ):
        if a != b:
            raise CbirError(
                f"{other.path} has {what} {b!r} but {first.path} has {a!r}; pack models of one recipe"
            )


def pack_ensemble(ckpts: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Write ``out``: one checkpoint of ``SiameseModule(net=EnsembleNet(members))`` with each member's
    weights, hyperparameters (the first member's, the net replaced), preprocessing and DataModule record
    (the first's; none for a model file); ``ensemble_members`` lists each member's path (relative to
    ``out``'s folder) and identity hashes. ``ckpts``: ``fit`` checkpoints or model files, mixed as one
    likes. Written atomically; an existing ``out`` is replaced only with ``overwrite``, and only if it is an
    ensemble checkpoint."""
    if len(ckpts) < 2:
        raise CbirError("an ensemble needs at least two models: --ckpt '[a.ckpt, b.model]'")
    out = file_target(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise CbirError(f"{out} exists; pass --overwrite true to replace it, or another --out")
        if not saved_with(out, MEMBERS_KEY):
            raise CbirError(
                f"{out} is not an ensemble checkpoint; --overwrite replaces only one: pass another --out"
            )
    members = [_read_member(p) for p in ckpts]
    nets = [_member_net(m) for m in members]
    first = members[0]
    specs = [checkpoint_preprocess(m) for m in members]  # once each: an older one rebuilds its DataModule
    for other, spec in zip(members[1:], specs[1:], strict=True):
        _check_alike(first, other, specs[0], spec)
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
        MEMBERS_KEY: [{"path": os.path.relpath(m.path, out.parent), **m.identity} for m in members],
        RECORD_KEY: specs[0],  # the members read images alike (_check_alike)
    }
    with atomic_file(out) as tmp:
        torch.save(contents, tmp)
    return out
