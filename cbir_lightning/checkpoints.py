"""Load a trained LightningModule back from a checkpoint, with one-line errors for bad files."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch

from cbir_lightning.errors import CbirError


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


def _trusted_class(path: str | Path, class_path: str, base: type, what: str) -> type:
    """The class ``class_path`` named by checkpoint ``path``, if it is a subclass of ``base``.

    Classes of this toolkit's packages are imported on demand; any other class must already be imported
    (so a checkpoint cannot make us import arbitrary code). CbirError naming the file otherwise.
    """
    import importlib
    import sys

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
        from cbir_lightning.models.siamese_module import SiameseModule

        return SiameseModule
    return _trusted_class(path, class_path, pl.LightningModule, "model")


def datamodule_class(path: str | Path, datamodule_args: dict) -> type[pl.LightningDataModule] | None:
    """The LightningDataModule class a checkpoint records (``_class_path`` of its
    ``datamodule_hyper_parameters``), imported under the same rule as the model's; None if none."""
    class_path = datamodule_args.get("_class_path")
    if not class_path:
        return None
    return _trusted_class(path, class_path, pl.LightningDataModule, "DataModule")


def restore_overrides(hyper_parameters: dict, state_dict: dict) -> dict:
    """Arguments that must not be re-read when a module is rebuilt from its checkpoint: pretrained
    backbone weights (``weights``) and a whitening initialisation file (``whitening_init``) are already in
    the state dict, and may not exist (offline, another machine)."""
    overrides = {}
    if hyper_parameters.get("weights") is not None:
        overrides["weights"] = None
    if hyper_parameters.get("whitening_init") is not None:
        overrides["whitening_init"] = None
        if "whiten.weight" in state_dict:
            overrides["whitening"] = int(state_dict["whiten.weight"].shape[0])
    return overrides


def load_module(path: str | Path, map_location: str = "cpu", whitening: bool = False) -> pl.LightningModule:
    """Rebuild the module saved by a ``cbir-lightning fit`` run (its class and arguments are in the file),
    in eval mode.

    ``whitening=True``: if ``<ckpt>.whitening.pt`` exists beside the checkpoint and the module supports
    it (``attach_whitening_file``), the module's ``embed`` applies it; by default embeddings are the
    model's own and callers apply the whitening file themselves (``cbir_lightning.whitening``).
    """
    path = check_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hyper_parameters = ckpt.get("hyper_parameters", {})
        cls = module_class(path, hyper_parameters)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "from scratch": the weights follow
            module = cls.load_from_checkpoint(
                path,
                map_location=map_location,
                weights_only=True,
                **restore_overrides(hyper_parameters, ckpt.get("state_dict", {})),
            )
    except CbirError:
        raise
    except (RuntimeError, KeyError, EOFError, ValueError, TypeError, AttributeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise CbirError(
            f"cannot load checkpoint {path} ({reason}); use a checkpoint written by `cbir-lightning fit`"
        ) from err
    if whitening and hasattr(module, "attach_whitening_file"):
        module.attach_whitening_file(path)
    module.eval()
    return module


def checkpoint_datamodule_args(path: str | Path) -> dict:
    """The DataModule arguments the checkpoint was trained with (empty if none were saved); a recorded
    ``_class_path`` has been checked by ``datamodule_class`` (trusted package or already imported), so
    callers may instantiate it."""
    ckpt = torch.load(check_checkpoint(path), map_location="cpu", weights_only=True)
    args = dict(ckpt.get("datamodule_hyper_parameters", {}))
    datamodule_class(path, args)
    return args


def last_checkpoint(dirpaths: list[str | Path]) -> Path | None:
    """The newest ``last*.ckpt`` in the given checkpoint folders (what ``--ckpt_path last`` resumes), or
    None when there is none."""
    found = [p for d in dirpaths for p in Path(d).glob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
