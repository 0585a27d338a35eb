"""``cbir-lightning whiten``: fit learned (Lw) or PCA whitening for a checkpoint or a model file; for a
checkpoint save it beside it, and write a model file with the whitening inside."""

from __future__ import annotations

import hashlib
from pathlib import Path

from jsonargparse.typing import PositiveInt

from cbir_lightning.checkpoints import load_module
from cbir_lightning.cli.evaluate import datamodule_from_config
from cbir_lightning.digest import update_with_tensor
from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import ModelFile, is_model_file
from cbir_lightning.whitening.fit import datamodule_whitening_data, fit_and_save, fit_whitening, summary
from cbir_lightning.whitening.functional import KINDS


def whiten(
    config_file: str,
    ckpt: str | None = None,
    model: str | None = None,
    kind: str = "lw",
    dim: int | None = None,
    batch_size: PositiveInt = 128,
    out: str | None = None,
) -> dict:
    """Fit learned (Lw) or PCA whitening for a checkpoint or a model file: a model file with it inside.

    The descriptors are the model's embeddings (without any whitening) of the config DataModule's
    ``whitening_data()`` (training images and matching pairs). A checkpoint also gets CKPT.whitening.pt
    beside it (applied at evaluation). Prints JSON (whitening, model_file, kind, dim, input_dim, images,
    pairs).

    Args:
        config_file: the YAML config used with ``fit`` (also ``--config``; its ``data`` section gives
            the images).
        ckpt: checkpoint written by ``cbir-lightning fit`` (a model file given here is taken as ``--model``).
        model: instead of ``--ckpt``, a model file (``best.model`` of a fit, ``cbir-lightning convert``):
            its module is whitened anew (a whitening inside it is replaced); no whitening file is written.
        kind: ``lw`` (learned from matching pairs) or ``pca``.
        dim: output dimension (leading components); default: the descriptor size.
        batch_size: images embedded at a time.
        out: the model file to write; default: the checkpoint's path with the suffix ``.model``, or for a
            model file ``<name>.<kind>.model`` beside it.
    """
    if kind not in KINDS:
        raise CbirError(f"unknown whitening kind {kind!r}; choose lw or pca")
    if (ckpt is None) == (model is None):
        raise CbirError("whiten needs one of --ckpt (a checkpoint) and --model (a model file)")
    if ckpt is not None and is_model_file(ckpt):
        ckpt, model = None, ckpt
    if model is not None:
        return _whiten_model_file(Path(model), config_file, kind, dim, batch_size, out)
    module = load_module(ckpt)
    datamodule = datamodule_from_config(config_file)
    result = fit_and_save(module, ckpt, datamodule, kind, dim, batch_size)
    model_file = ModelFile.from_checkpoint(ckpt).save(out or Path(ckpt).with_suffix(".model"))
    return {**result, "model_file": str(model_file), "checkpoint": ckpt}


def _whiten_model_file(path: Path, config_file: str, kind, dim, batch_size, out) -> dict:
    """The model file at ``path`` with a whitening fitted on its own module's embeddings, written to
    ``out`` (never over ``path``)."""
    if not is_model_file(path):
        raise CbirError(f"--model {path} is not a model file; write one with `cbir-lightning convert`")
    source = ModelFile.load(path)
    target = Path(out) if out is not None else path.with_name(f"{path.stem}.{kind}.model")
    if target.resolve() == path.resolve():
        raise CbirError(f"--out {target} is the model file whitened; write the new one elsewhere")
    dataset, pairs = datamodule_whitening_data(datamodule_from_config(config_file))
    whitening = fit_whitening(source.module(), dataset, pairs, kind, dim, batch_size)
    whitened = source.with_whitening(whitening, whitening_digest(whitening))
    whitened.provenance = {**whitened.provenance, "whitening_file": None, "whitened_from": str(path)}
    written = whitened.save(target)
    return {
        **summary(whitening, kind, dataset, pairs),
        "whitening": None,
        "model_file": str(written),
        "model": str(path),
    }


def whitening_digest(whitening: dict) -> str:
    """SHA-256 of a whitening's kind and tensors (what an index records of a whitening held by a model
    file rather than read from a whitening file)."""
    digest = hashlib.sha256(str(whitening["kind"]).encode())
    for key in ("mean", "projection"):
        update_with_tensor(digest, whitening[key])
    return digest.hexdigest()
