"""The model file: a trained model as one self-contained file, what ``index``, ``search``, ``recommend``,
``serve`` and the Python API load without the checkpoint's DataModule.

It holds the module's class path and hyperparameters (as the Lightning checkpoint stores them), its state
dict, the evaluation preprocessing as data (a spec of :mod:`cbir_lightning.export.preprocess`), the
whitening (``{"kind", "mean", "projection"}``) or None, the similarity kind (``dot``: vectors ranked by
inner product; ``model``: scored by ``module.similarity``), the descriptor size, the checkpoint's identity
hash (what an index manifest records, so an index built from the checkpoint is reused) and provenance
(source checkpoint, the run's config, the best metrics). It is a ``torch.save`` of plain types and tensors
only, so ``torch.load(weights_only=True)`` reads it (no object is unpickled), written atomically, with a
format marker and version checked on load.

``ModelFile.from_checkpoint`` is the one place a model file is made from a Lightning checkpoint: the
preprocessing spec comes from the checkpoint's record (``RECORD_KEY``, written at ``fit`` by
:class:`~cbir_lightning.callbacks.ModelFileWriter`) or, for older checkpoints, from its rebuilt DataModule.
It is also the one place older checkpoints are understood (:func:`current_hyper_parameters`): string loss
and miner names, the old module path of ``KochSiameseNet`` and pretrained sources become today's
hyperparameters; loading a checkpoint otherwise takes today's only.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from cbir_lightning.atomic import atomic_file
from cbir_lightning.checkpoints import Checkpoint, module_class, read_checkpoint
from cbir_lightning.digest import file_sha256
from cbir_lightning.errors import CbirError
from cbir_lightning.export.preprocess import preprocess, sample_images, spec_of_datamodule
from cbir_lightning.models.embedding_module import self_contained
from cbir_lightning.whitening import apply_whitening, load_whitening
from cbir_lightning.whitening.io import CHECKPOINT_KEY

FORMAT = "cbir-lightning-model-file"
VERSION = 1
RECORD_KEY = "cbir_preprocess"  # the spec a fit checkpoint records (ModelFileWriter.on_save_checkpoint)
SIMILARITIES = ("dot", "model")


def plain(value, where: str = "value"):
    """``value`` with every mapping (and argparse/jsonargparse namespace) a dict (tensors, numbers, strings,
    lists and tuples kept), so that ``torch.load(weights_only=True)`` reads it back; CbirError naming
    ``where`` for any other object."""
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, argparse.Namespace):  # jsonargparse's: class_path / init_args of a nested object
        return plain(value.as_dict() if hasattr(value, "as_dict") else vars(value), where)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v, where) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    raise CbirError(f"{where} is a {type(value).__name__}, which a model file cannot hold")


# ---- older checkpoints (the converter's, nowhere else) ----------------------------------------------
OLD_CLASS_PATHS = {"cbir_lightning.models.koch.KochSiameseNet": "cbir_lightning.models.KochSiameseNet"}
_PML = "pytorch_metric_learning"
# GeM's ``loss: pml_<name>`` -> (the loss, the miner ``miner: default`` meant)
OLD_PML_LOSSES = {
    "pml_contrastive": (f"{_PML}.losses.ContrastiveLoss", f"{_PML}.miners.PairMarginMiner"),
    "pml_triplet": (f"{_PML}.losses.TripletMarginLoss", f"{_PML}.miners.TripletMarginMiner"),
    "pml_multi_similarity": (f"{_PML}.losses.MultiSimilarityLoss", f"{_PML}.miners.MultiSimilarityMiner"),
}
OLD_MINERS = {
    "pair_margin": f"{_PML}.miners.PairMarginMiner",
    "triplet_margin": f"{_PML}.miners.TripletMarginMiner",
    "multi_similarity": f"{_PML}.miners.MultiSimilarityMiner",
}
OLD_BATCH_LOSSES = {
    "bce": "cbir_lightning.losses.AllPairsBCELoss",
    "softmax": "cbir_lightning.losses.InBatchSoftmaxLoss",
}
OLD_CONTRASTIVE_MARGIN = 0.7  # every GeM checkpoint saved before margin became optional holds it
INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"  # builds the class_path arguments


def _renamed(value):
    """``value`` with old class paths (``OLD_CLASS_PATHS``) replaced, at any depth."""
    if isinstance(value, Mapping):
        return {k: OLD_CLASS_PATHS.get(v, v) if k == "class_path" else _renamed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    return value


def _old_gem_loss(hparams: dict, where: str) -> None:
    """GeM's ``loss`` / ``margin`` / ``loss_kwargs`` / ``miner`` / ``miner_kwargs`` as loss and miner
    objects (``class_path``), in place: the objects those names built."""
    loss, miner = hparams.get("loss", "contrastive"), hparams.get("miner", "default")
    margin, loss_kwargs = hparams.pop("margin", None), hparams.pop("loss_kwargs", None) or {}
    miner_kwargs = hparams.pop("miner_kwargs", None) or {}
    own = None
    if loss == "contrastive":
        margin = OLD_CONTRASTIVE_MARGIN if margin is None else margin
        hparams["loss"] = {"class_path": "cbir_lightning.losses.CirtorchContrastiveLoss",
                           "init_args": {"margin": float(margin)}}  # fmt: skip
        miner = None  # the paper's loss had no miner
    elif isinstance(loss, str):
        if loss not in OLD_PML_LOSSES:
            raise CbirError(f"{where}: unknown loss {loss!r}; it cannot be converted")
        loss_path, own = OLD_PML_LOSSES[loss]
        hparams["loss"] = {"class_path": loss_path, "init_args": dict(loss_kwargs)}
    elif isinstance(loss, Mapping):
        own = next((m for cls, m in OLD_PML_LOSSES.values() if loss.get("class_path") == cls), None)
    if isinstance(miner, str):
        path = own if miner == "default" else OLD_MINERS.get(miner)
        if miner != "default" and path is None:
            raise CbirError(f"{where}: unknown miner {miner!r}; it cannot be converted")
        miner = None if path is None else {"class_path": path, "init_args": dict(miner_kwargs)}
    hparams["miner"] = miner


def current_hyper_parameters(hyper_parameters: dict, state_dict: dict, where: str = "checkpoint") -> dict:
    """An older checkpoint's module hyperparameters as today's modules take them: string loss names
    (GeM ``loss: contrastive | pml_*`` with ``margin`` / ``loss_kwargs`` / ``miner`` / ``miner_kwargs``,
    Siamese ``batch_loss: bce | softmax``) as loss and miner ``class_path`` objects, old class paths
    renamed, pretrained sources switched off (``self_contained``). Today's hyperparameters are returned
    unchanged; CbirError naming ``where`` for a name that cannot be converted."""
    hparams = _renamed(dict(hyper_parameters))
    cls = str(hparams.get("_class_path", ""))
    old_gem = cls.endswith("GeMSiameseModule") and (
        isinstance(hparams.get("loss"), str)
        or isinstance(hparams.get("miner"), str)
        or any(k in hparams for k in ("margin", "loss_kwargs", "miner_kwargs"))
    )
    if old_gem:
        _old_gem_loss(hparams, where)
    batch_loss = hparams.get("batch_loss")
    if isinstance(batch_loss, str):
        if batch_loss not in OLD_BATCH_LOSSES:
            raise CbirError(f"{where}: unknown batch_loss {batch_loss!r}; it cannot be converted")
        hparams["batch_loss"] = {"class_path": OLD_BATCH_LOSSES[batch_loss]}
    if hparams != dict(hyper_parameters) and "_class_path" in hparams:
        hparams.setdefault("_instantiator", INSTANTIATOR)  # class_path arguments are built
    return self_contained(hparams, state_dict)


def _current(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` with today's hyperparameters (:func:`current_hyper_parameters`; its contents, and
    so its identity, unchanged)."""
    state = checkpoint.contents.get("state_dict") or {}
    hparams = current_hyper_parameters(checkpoint.hyper_parameters, state, f"checkpoint {checkpoint.path}")
    if hparams == checkpoint.hyper_parameters:
        return checkpoint
    return dataclasses.replace(
        checkpoint, hyper_parameters=hparams, module_class=module_class(checkpoint.path, hparams)
    )


def is_model_file(path: str | Path) -> bool:
    """Whether ``path`` is a model file, from its marker (the pickle inside the zip, no tensor read)."""
    return saved_with(path, FORMAT)


def saved_with(path: str | Path, marker: str) -> bool:
    """Whether ``path`` is a ``torch.save`` file whose pickle holds the string ``marker`` (a format or a key
    this toolkit writes), read without loading a tensor."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            return name is not None and marker.encode() in archive.read(name)
    except (OSError, zipfile.BadZipFile):
        return False


def module_checkpoint(path: str | Path) -> Checkpoint:
    """What rebuilds the module of ``path``: a Lightning checkpoint, or a model file's module part
    (:meth:`ModelFile.checkpoint`)."""
    return ModelFile.load(path).checkpoint() if is_model_file(path) else read_checkpoint(path)


def checkpoint_preprocess(checkpoint: Checkpoint) -> dict:
    """The preprocessing the checkpoint records, else its rebuilt DataModule's ``preprocess_spec()``."""
    recorded = checkpoint.contents.get(RECORD_KEY)
    if isinstance(recorded, Mapping):
        return dict(recorded)
    return spec_of_datamodule(checkpoint.datamodule())


def _best_metrics(contents: dict) -> dict:
    """``{monitor: best score}`` of the checkpoint's ModelCheckpoint states (empty if none)."""
    best = {}
    for key, state in (contents.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, Mapping):
            monitor, score = state.get("monitor"), state.get("best_model_score")
            if monitor and score is not None:
                best[str(monitor)] = float(score)
    return best


def _run_config(path: Path) -> str | None:
    """The run's ``config.yaml`` (LightningCLI writes it in the run folder, above ``checkpoints/``; or
    beside the checkpoint), or None."""
    for config in (path.parent.parent / "config.yaml", path.parent / "config.yaml"):
        if config.is_file():
            return config.read_text()
    return None


def _similarity_and_dim(module, spec: dict, whitening: dict | None) -> tuple[str, int]:
    """The similarity kind and the descriptor size, from the module's embeddings of two synthetic images:
    ``dot`` when whitened or when the module's similarity equals the dot product (as ``SearchModel``)."""
    with torch.no_grad():
        vectors = torch.cat([module.embed(preprocess(im, spec)[None]) for im in sample_images()[:2]])
    vectors = vectors.float()
    if whitening is not None:
        return "dot", int(whitening["projection"].shape[0])
    dim = int(vectors.shape[1])
    if not module.dot_product_similarity:
        return "model", dim
    with torch.no_grad():
        own = module.similarity(vectors, vectors).double()
    dot = vectors.double() @ vectors.double().T
    return ("dot" if torch.allclose(own, dot, atol=1e-4, rtol=1e-4) else "model"), dim


@dataclass
class ModelFile:
    """A trained model as data (see the module docstring); ``path`` is where it was read or written."""

    hyper_parameters: dict
    state_dict: dict = field(repr=False)
    lightning_version: str | None
    preprocess: dict
    whitening: dict | None = field(repr=False)
    whitening_sha256: str | None
    similarity: str
    dim: int
    identity: dict
    provenance: dict = field(repr=False)
    path: Path | None = None
    _built: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path | Checkpoint) -> ModelFile:
        """The model file of a ``cbir-lightning fit`` checkpoint (a path or one already read), with the
        whitening file beside it if there is one; an older checkpoint's hyperparameters become today's
        (:func:`current_hyper_parameters`). CbirError (one line) for an unreadable or non-convertible
        checkpoint or an unknown preprocessing."""
        checkpoint = ckpt if isinstance(ckpt, Checkpoint) else read_checkpoint(Path(ckpt).resolve())
        checkpoint = _current(checkpoint)  # an older checkpoint's names: here only
        contents = checkpoint.contents
        spec = plain(checkpoint_preprocess(checkpoint), "preprocess")
        wfile = checkpoint.whitening_file
        whitening = load_whitening(wfile) if wfile is not None else None
        module = checkpoint.module()
        similarity, dim = _similarity_and_dim(module, spec, whitening)
        made = cls(
            hyper_parameters=plain(checkpoint.hyper_parameters, "hyper_parameters"),
            state_dict=dict(contents.get("state_dict", {})),
            lightning_version=contents.get("pytorch-lightning_version"),
            preprocess=spec,
            whitening=whitening,
            whitening_sha256=file_sha256(wfile) if wfile is not None else None,
            similarity=similarity,
            dim=dim,
            identity=dict(checkpoint.identity),
            provenance={
                "checkpoint": str(checkpoint.path),
                "whitening_file": str(wfile) if wfile is not None else None,
                "datamodule": plain(checkpoint.datamodule_args, "datamodule_hyper_parameters"),
                "config": _run_config(checkpoint.path),
                "best": _best_metrics(contents),
                "epoch": contents.get("epoch"),
                "global_step": contents.get("global_step"),
            },
            path=checkpoint.path,
        )
        made._built = module
        return made

    def with_whitening(self, whitening: dict | None, sha256: str | None = None) -> ModelFile:
        """A copy with ``whitening`` (a dict of ``cbir_lightning.whitening``) inside, or without one."""
        kept = None if whitening is None else {k: whitening[k] for k in ("kind", "mean", "projection")}
        dim = self.dim if kept is None else int(kept["projection"].shape[0])
        similarity = "dot" if kept is not None else self.similarity
        return ModelFile(
            **{k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("_")}
            | {"whitening": kept, "whitening_sha256": sha256, "dim": dim, "similarity": similarity}
        )

    def to_dict(self) -> dict:
        """What the file holds: plain types and tensors only."""
        whitening = None
        if self.whitening is not None:
            whitening = {
                "kind": str(self.whitening["kind"]),
                "mean": self.whitening["mean"].detach().cpu().contiguous(),
                "projection": self.whitening["projection"].detach().cpu().contiguous(),
            }
        return {
            "format": FORMAT,
            "version": VERSION,
            "module": {
                "hyper_parameters": self.hyper_parameters,
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
                "lightning_version": self.lightning_version,
            },
            "preprocess": self.preprocess,
            "whitening": whitening,
            "whitening_sha256": self.whitening_sha256,
            "similarity": self.similarity,
            "dim": int(self.dim),
            "identity": dict(self.identity),
            "provenance": plain(self.provenance, "provenance"),
        }

    def save(self, path: str | Path) -> Path:
        """Write the file to ``path`` atomically (:func:`~cbir_lightning.atomic.atomic_file`); an existing
        file there is replaced only if it is a model file (CbirError, one line, for anything else: a
        checkpoint, the file converted, a foreign file)."""
        path = Path(path)
        if (path.exists() or path.is_symlink()) and not path.is_dir() and not is_model_file(path):
            raise CbirError(
                f"{path} exists and is not a model file; a model file replaces only a model file: pass "
                "another path"
            )
        with atomic_file(path) as tmp:
            torch.save(self.to_dict(), tmp)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelFile:
        """Read a model file (``torch.load(weights_only=True)``); a missing, truncated, foreign or newer
        file is one CbirError line naming it."""
        path = Path(path)
        if not path.is_file():
            raise CbirError(f"model file {path} not found; write one with `cbir-lightning convert`")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, KeyError, EOFError, ValueError, TypeError, AttributeError, OSError,
                pickle.UnpicklingError) as err:  # fmt: skip
            reason = " ".join(str(err).split())[:200]
            raise CbirError(
                f"model file {path} is truncated or not a model file ({reason}); write it again with "
                "`cbir-lightning convert`"
            ) from err
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data, path: Path) -> ModelFile:
        """The model file of ``data`` (what ``to_dict`` gives); CbirError naming ``path`` if it is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CbirError(
                f"{path} is not a cbir-lightning model file; write one with `cbir-lightning convert`"
            )
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise CbirError(
                f"model file {path} has format version {data.get('version')!r}; this cbir_lightning reads "
                f"versions up to {VERSION}: upgrade it"
            )
        try:
            module = data["module"]
            made = cls(
                hyper_parameters=dict(module["hyper_parameters"]),
                state_dict=dict(module["state_dict"]),
                lightning_version=module.get("lightning_version"),
                preprocess=dict(data["preprocess"]),
                whitening=data["whitening"],
                whitening_sha256=data.get("whitening_sha256"),
                similarity=str(data["similarity"]),
                dim=int(data["dim"]),
                identity=dict(data["identity"]),
                provenance=dict(data.get("provenance") or {}),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CbirError(f"model file {path} is incomplete (no {err}); write it again") from err
        if made.similarity not in SIMILARITIES:
            raise CbirError(f"model file {path} has unknown similarity {made.similarity!r}")
        return made

    def checkpoint(self) -> Checkpoint:
        """The file's module part as a :class:`~cbir_lightning.checkpoints.Checkpoint` with its
        preprocessing record (no DataModule, no whitening), so the module is rebuilt exactly as from the
        checkpoint and :func:`checkpoint_preprocess` reads the file's preprocessing."""
        source = self.path or Path("<model file>")
        contents = {
            "hyper_parameters": self.hyper_parameters,
            "state_dict": self.state_dict,
            RECORD_KEY: dict(self.preprocess),
        }
        if self.lightning_version is not None:
            contents["pytorch-lightning_version"] = self.lightning_version
        return Checkpoint(
            path=source,
            contents=contents,
            hyper_parameters=dict(self.hyper_parameters),
            module_class=module_class(source, self.hyper_parameters),
            datamodule_args={},
            whitening_file=None,
        )

    def lightning_checkpoint(self) -> dict:
        """The file as a Lightning checkpoint dict (what ``validate``/``test``/``predict --ckpt_path
        X.model`` restore: weights, hyperparameters, the preprocessing record and the whitening under
        ``whitening.io.CHECKPOINT_KEY``); read by ``AtomicCheckpointIO``."""
        return {
            "state_dict": dict(self.state_dict),
            "hyper_parameters": dict(self.hyper_parameters),
            "pytorch-lightning_version": self.lightning_version or pl.__version__,
            RECORD_KEY: dict(self.preprocess),
            CHECKPOINT_KEY: self.whitening,
        }

    def module(self, map_location: str = "cpu"):
        """The LightningModule rebuilt from the file alone, in eval mode (the whitening is applied by the
        caller, see ``whiten``)."""
        built, self._built = self._built, None  # the module from_checkpoint already built, once
        if built is not None:
            return built.to(map_location).eval()
        return self.checkpoint().module(map_location)

    @property
    def transform(self):
        """PIL image -> the evaluation tensor, from the recorded preprocessing (no DataModule)."""
        return functools.partial(_preprocess, spec=self.preprocess)

    @property
    def decode_size(self) -> int:
        """The image size large JPEGs may be decoded reduced to (the preprocessing's size)."""
        return int(self.preprocess["size"])

    def whiten(self, vectors: torch.Tensor) -> torch.Tensor:
        """Module embeddings -> the model's vectors (whitened if the file holds a whitening)."""
        return vectors if self.whitening is None else apply_whitening(vectors, self.whitening)


def _preprocess(image, spec: dict) -> torch.Tensor:
    return preprocess(image, spec)
