"""Read a ``cbir-lightning fit`` checkpoint once, with one-line errors for bad files: ``read_checkpoint``
gives everything a caller needs (module, DataModule class and arguments, identity hash, whitening file);
``build_datamodule`` builds a DataModule from a config's or a checkpoint's record."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentError, ArgumentParser
from pytorch_lightning.core.saving import _load_state
from pytorch_lightning.utilities.migration import pl_legacy_patch
from pytorch_lightning.utilities.migration.utils import _pl_migrate_checkpoint

from cbir_lightning.digest import update_with_tensor
from cbir_lightning.errors import CbirError
from cbir_lightning.models.siamese_module import SiameseModule
from cbir_lightning.whitening.io import whitening_path


def check_checkpoint(path: str | Path) -> Path:
    """The path if it looks like a complete checkpoint; CbirError naming it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(
            f"checkpoint {path} not found; pass the .ckpt written by `cbir-lightning fit` "
            "(see the 'checkpoint' field of its last line)"
        )
    if not zipfile.is_zipfile(path):
        raise CbirError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint; "
            "use another checkpoint or train again"
        )
    return path


TRUSTED_PACKAGES = ("cbir_lightning.", "data_modules.")
# what reading or rebuilding a damaged or foreign checkpoint raises (turned into one CbirError line)
UNREADABLE = (RuntimeError, KeyError, EOFError, ValueError, TypeError, AttributeError)


def _trusted_class(path: str | Path, class_path: str, base: type, what: str) -> type:
    """The class ``class_path`` named by checkpoint ``path``, if it is a subclass of ``base``.

    Classes of this toolkit's packages are imported on demand; any other class must already be imported
    (so a checkpoint cannot make us import arbitrary code). CbirError naming the file otherwise.
    """
    module_name, _, name = str(class_path).rpartition(".")
    if module_name not in sys.modules and not f"{module_name}.".startswith(TRUSTED_PACKAGES):
        raise CbirError(
            f"checkpoint {path} was saved with {what} class {class_path}, which is not part of "
            f"cbir_lightning; import {module_name} before loading it"
        )
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CbirError(
            f"checkpoint {path} needs class {class_path}, which cannot be imported ({err}); "
            "use the cbir_lightning version that wrote it"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise CbirError(f"checkpoint {path}: {class_path} is not a {base.__name__}")
    return cls


def module_class(path: str | Path, hyper_parameters: dict) -> type[pl.LightningModule]:
    """The LightningModule class a checkpoint was saved with (``_class_path``, written by LightningCLI),
    imported under the rule of ``_trusted_class``. Checkpoints without a class path (saved from Python)
    are SiameseModule's.
    """
    class_path = hyper_parameters.get("_class_path")
    if not class_path:
        return SiameseModule
    return _trusted_class(path, class_path, pl.LightningModule, "model")


def datamodule_class(path: str | Path, datamodule_args: dict) -> type[pl.LightningDataModule] | None:
    """The LightningDataModule class a checkpoint records (``_class_path`` of its
    ``datamodule_hyper_parameters``), imported under the same rule as the model's; None if none."""
    class_path = datamodule_args.get("_class_path")
    if not class_path:
        return None
    return _trusted_class(path, class_path, pl.LightningDataModule, "DataModule")


@dataclass
class Checkpoint:
    """Everything a ``cbir-lightning fit`` checkpoint records, from one read of the file.

    ``hyper_parameters`` / ``module_class``: the module's arguments and class (trusted, see
    ``_trusted_class``); ``datamodule_class`` / ``datamodule_args``: the DataModule's class (or None) and
    its init arguments (the class is imported when first asked); ``identity``: ``{"hparams": sha256 of
    the hyperparameters, "weights": sha256 of the state dict}`` (what an index records);
    ``whitening_file``: ``<ckpt>.whitening.pt`` if it exists.
    """

    path: Path
    contents: dict = field(repr=False)
    hyper_parameters: dict
    module_class: type[pl.LightningModule]
    datamodule_args: dict
    whitening_file: Path | None

    @cached_property
    def datamodule_class(self) -> type[pl.LightningDataModule] | None:
        """The recorded DataModule's class (imported when first asked: a model file or an index needs
        only the module, and must not import the DataModule's package)."""
        return datamodule_class(self.path, self.datamodule_args)

    @cached_property
    def identity(self) -> dict:
        """The identity hash (computed when first asked: hashing every weight is not free)."""
        return checkpoint_identity(self.contents)

    def module(
        self, map_location: str = "cpu", whitening: bool = False, hparams: dict | None = None
    ) -> pl.LightningModule:
        """The module rebuilt from the checkpoint's class, arguments and weights (no second read), in
        eval mode; ``whitening=True`` attaches the whitening file (see ``load_module``); ``hparams``
        replaces saved constructor arguments that change no weight (e.g. ``test_time_scales``)."""
        contents = {**self.contents, "hyper_parameters": dict(self.hyper_parameters)}  # ours stay unchanged
        if isinstance(contents.get("state_dict"), dict):
            contents["state_dict"] = dict(contents["state_dict"])
        try:
            contents = _pl_migrate_checkpoint(contents, checkpoint_path=self.path)
            overrides = dict(hparams or {})
            contents["hyper_parameters"].update(overrides)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # e.g. "from scratch": the weights follow
                module = _load_state(self.module_class, contents, **overrides)
        except CbirError:
            raise
        except (*UNREADABLE, ArgumentError) as err:  # ArgumentError: e.g. an older loss name
            raise _unloadable(self.path, err) from err
        module = module.to(map_location)
        if whitening:
            module.attach_whitening_file(self.path)
        module.eval()
        return module

    def datamodule(self) -> pl.LightningDataModule:
        """The checkpoint's DataModule rebuilt from its saved arguments (it must not need its data root);
        CbirError if the checkpoint records none or it cannot be built."""
        if self.datamodule_class is None:
            raise CbirError(
                f"checkpoint {self.path} records no DataModule, so its image transform is unknown; "
                "use a checkpoint written by `cbir-lightning fit`"
            )
        class_path = self.datamodule_args["_class_path"]
        init = {k: v for k, v in self.datamodule_args.items() if not k.startswith("_")}
        return build_datamodule({"class_path": class_path, "init_args": init}, f"checkpoint {self.path}")

    def model_config(self) -> dict:
        """The model config that rebuilds the module under LightningCLI: its hyperparameters (which
        name no pretrained source, see ``models.embedding_module.self_contained``); empty if none were
        saved."""
        hparams = dict(self.hyper_parameters)
        hparams.pop("_instantiator", None)
        if not hparams:
            return {}
        if "_class_path" in hparams:
            class_path = hparams.pop("_class_path")
            _check_arguments(self.path, self.module_class, hparams)
            return {"class_path": class_path, "dict_kwargs": hparams}
        return hparams


def _check_arguments(path: Path, cls: type, hyper_parameters: dict) -> None:
    """CbirError (one line) for recorded arguments that ``cls`` no longer takes: the checkpoint of an older
    cbir_lightning, which ``convert`` understands (``model_file.current_hyper_parameters``)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [k for k in hyper_parameters if k not in parameters and not k.startswith("_")]
    if unknown:
        raise CbirError(
            f"checkpoint {path} records arguments {cls.__name__} no longer takes ({', '.join(unknown)}): an "
            f"older cbir_lightning wrote it; convert it with `cbir-lightning convert --ckpt {path} --out "
            "MODEL.model` and pass the model file"
        )


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read checkpoint ``path`` once (``torch.load(weights_only=True)``: an unsafe pickle is refused) and
    check it: a missing or truncated file, an unreadable one, or a module class outside the trusted
    packages gives one CbirError line naming the file (the DataModule's class: when first asked)."""
    path = check_checkpoint(path)
    try:
        with pl_legacy_patch():
            contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only: an object outside plain data and tensors
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it names {named.group(1)}" if named else "not plain data and tensors"
        raise CbirError(
            f"checkpoint {path} holds objects that a safe load refuses ({what}); read only checkpoints "
            "written by `cbir-lightning fit` or files converted from them"
        ) from err
    except UNREADABLE as err:
        raise _unloadable(path, err) from err  # weights_only: a pickle of arbitrary objects is refused here
    if not isinstance(contents, dict):
        raise CbirError(
            f"checkpoint {path} holds no checkpoint dict; use one written by `cbir-lightning fit`"
        )
    hyper_parameters = dict(contents.get("hyper_parameters", {}))
    datamodule_args = dict(contents.get("datamodule_hyper_parameters", {}))
    wfile = whitening_path(path)
    return Checkpoint(
        path=path,
        contents=contents,
        hyper_parameters=hyper_parameters,
        module_class=module_class(path, hyper_parameters),
        datamodule_args=datamodule_args,
        whitening_file=wfile if wfile.is_file() else None,
    )


def checkpoint_identity(contents: dict) -> dict:
    """``{"hparams": sha256 of the module's hyperparameters, "weights": sha256 of the state dict}`` of a
    loaded checkpoint dict."""
    digest = hashlib.sha256()
    for key in sorted(contents.get("state_dict", {})):
        digest.update(key.encode())
        update_with_tensor(digest, contents["state_dict"][key])
    hparams = json.dumps(contents.get("hyper_parameters", {}), sort_keys=True, default=str)
    return {"hparams": hashlib.sha256(hparams.encode()).hexdigest(), "weights": digest.hexdigest()}


def build_datamodule(config: dict, source: str) -> pl.LightningDataModule:
    """A DataModule from ``{"class_path", "init_args"}`` (a config's ``data`` section or a checkpoint's
    record), as LightningCLI builds it; CbirError naming ``source`` if it cannot be built (a user error
    the DataModule raises itself, ``CbirError``, passes unchanged). ``evaluate --config`` and the
    checkpoint's :meth:`Checkpoint.datamodule` both build through here."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    try:
        parsed = parser.parse_object({"data": config})
        return parser.instantiate_classes(parsed).data
    except CbirError:
        raise
    except Exception as err:
        reason = " ".join(str(err).split())[:300]
        what = config.get("class_path") if isinstance(config, dict) else None
        raise CbirError(
            f"{source}: cannot build its DataModule{f' {what}' if what else ''} ({reason})"
        ) from err


def _unloadable(path: Path, err: Exception) -> CbirError:
    reason = " ".join(str(err).split())[:300]
    return CbirError(
        f"cannot load checkpoint {path} ({reason}); use a checkpoint written by `cbir-lightning fit`, or "
        f"convert an older one: cbir-lightning convert --ckpt {path} --out MODEL.model"
    )


def load_module(path: str | Path, map_location: str = "cpu", whitening: bool = False) -> pl.LightningModule:
    """Rebuild the module saved by a ``cbir-lightning fit`` run (its class and arguments are in the file),
    in eval mode: ``read_checkpoint(path).module(...)``.

    ``whitening=True``: if ``<ckpt>.whitening.pt`` exists beside the checkpoint and the module supports
    it (``attach_whitening_file``), the module's ``embed`` applies it; by default embeddings are the
    model's own and callers apply the whitening file themselves (``cbir_lightning.whitening``).
    """
    return read_checkpoint(path).module(map_location, whitening)


def checkpoint_datamodule_args(path: str | Path) -> dict:
    """The DataModule arguments the checkpoint was trained with (empty if none were saved); a recorded
    ``_class_path`` has been checked by ``datamodule_class`` (trusted package or already imported), so
    callers may instantiate it."""
    checkpoint = read_checkpoint(path)
    checkpoint.datamodule_class  # noqa: B018 (the check of the recorded class)
    return checkpoint.datamodule_args


def last_checkpoint(dirpaths: list[str | Path]) -> Path | None:
    """The newest ``last*.ckpt`` in the given checkpoint folders (what ``--ckpt_path last`` resumes), or
    None when there is none."""
    found = [p for d in dirpaths for p in Path(d).glob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
