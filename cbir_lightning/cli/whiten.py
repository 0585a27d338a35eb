"""``cbir-lightning whiten``: fit learned (Lw) or PCA whitening for a checkpoint, save it beside it and
write the checkpoint's model file with the whitening inside."""

from __future__ import annotations

from pathlib import Path


def whiten(
    ckpt: str,
    config_file: str,
    kind: str = "lw",
    dim: int | None = None,
    batch_size: int = 128,
    out: str | None = None,
) -> dict:
    """Fit learned (Lw) or PCA whitening for a checkpoint: CKPT.whitening.pt and a model file with it.

    The descriptors are the checkpoint's embeddings of the config DataModule's ``whitening_data()``
    (training images and matching pairs); the file is applied at evaluation, and a model file with the
    whitening inside is written for index/search. Prints JSON (whitening, model_file, kind, dim,
    input_dim, images, pairs).

    Args:
        ckpt: checkpoint written by ``cbir-lightning fit``.
        config_file: the YAML config used with ``fit`` (also ``--config``; its ``data`` section gives
            the images).
        kind: ``lw`` (learned from matching pairs) or ``pca``.
        dim: output dimension (leading components); default: the descriptor size.
        batch_size: images embedded at a time.
        out: the model file to write; default: the checkpoint's path with the suffix ``.model``.
    """
    from cbir_lightning.checkpoints import load_module
    from cbir_lightning.cli.evaluate import datamodule_from_config
    from cbir_lightning.errors import CbirError
    from cbir_lightning.model_file import ModelFile
    from cbir_lightning.whitening.fit import fit_and_save
    from cbir_lightning.whitening.functional import KINDS

    if kind not in KINDS:
        raise CbirError(f"unknown whitening kind {kind!r}; choose lw or pca")
    module = load_module(ckpt)
    datamodule = datamodule_from_config(config_file)
    summary = fit_and_save(module, ckpt, datamodule, kind, dim, batch_size)
    model_file = ModelFile.from_checkpoint(ckpt).save(out or Path(ckpt).with_suffix(".model"))
    return {**summary, "model_file": str(model_file), "checkpoint": ckpt}
