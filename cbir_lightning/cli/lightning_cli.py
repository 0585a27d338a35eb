"""``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI with OmegaConf interpolation.

Every run ends with one JSON line: after ``fit`` the best checkpoint is validated and reported
(``checkpoint`` plus the validation metrics without their ``val/`` prefix); ``validate`` and ``test``
report their metrics the same way.

A ``--config`` file may extend a base config (``extends: base_fit.yaml``, see
``cbir_lightning.cli.config_files``); the run uses, prints and saves the merged config.

A killed ``fit`` resumes with ``--ckpt_path last``: the newest ``last*.ckpt`` in the config's
ModelCheckpoint folder (the shipped configs use ``${trainer.default_root_dir}/checkpoints``, so
``--trainer.default_root_dir`` moves every output of a run); without one the command stops with one line.
The resumed run is the uninterrupted one, bit for bit: the training loaders checkpoint their epoch and
position (``data_modules.sampling.samplers.EpochLoader``) and every checkpoint holds the global random
generators (``RandomState``).
A checkpoint's module is rebuilt from the checkpoint alone (no pretrained-weights or whitening_init
file is read), and ``fit`` stops at the first NaN/inf training loss (``StopOnNonFinite``).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import get_loader, set_parsing_settings
from lightning_fabric.plugins import CheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from cbir_lightning.atomic import atomic_file
from cbir_lightning.callbacks.random_state import RandomState
from cbir_lightning.callbacks.stop_on_nonfinite import StopOnNonFinite
from cbir_lightning.checkpoint_io import AtomicCheckpointIO
from cbir_lightning.checkpoints import check_checkpoint, last_checkpoint
from cbir_lightning.cli import LIGHTNING_COMMANDS, interruptible
from cbir_lightning.cli.config_files import (
    CALLBACK_OVERRIDES,
    callback_names,
    read_config,
    split_callback_overrides,
    uses_bases,
)
from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import RECORD_KEY, module_checkpoint
from cbir_lightning.models.embedding_module import self_contained

LIGHTNING_CKPT_NAMES = ("best", "hpc", "registry")


class ConfigParser(LightningArgumentParser):
    """LightningCLI's parser; a ``--config`` file that extends a base config (``extends: base.yaml``) or
    names its callbacks is parsed as the merged config (``cbir_lightning.cli.config_files``), so
    ``--print_config`` and the ``config.yaml`` saved in the run folder are the whole config. Interpolations
    are still resolved by jsonargparse (``omegaconf+``), after the command-line overrides."""

    def parse_path(self, path, ext_vars=None, env=None, defaults=True, **kwargs):
        """Any other file is parsed as LightningCLI parses it."""
        file = Path(path)
        try:
            data = get_loader("yaml")(file.read_text())
        except Exception:  # not a local YAML file: jsonargparse reads it (or says why not)
            data = None
        if not uses_bases(data):
            return super().parse_path(path, ext_vars, env, defaults, **kwargs)
        merged = read_config(file, CALLBACK_OVERRIDES.get())
        text = yaml.safe_dump(merged, sort_keys=False, allow_unicode=True)
        return self.parse_string(text, file.name, ext_vars, env, defaults, **kwargs)


class LogConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` beside the run and logs the whole config to the experiment loggers."""

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="json")
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": json.loads(config)})


def report(trainer: pl.Trainer, metrics: dict, **extra) -> None:
    """Close the experiment loggers (W&B prints its sync hint then), then print the run's result as the
    last line: one JSON object, metric prefixes stripped."""
    for logger in trainer.loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
    if not trainer.is_global_zero:
        return
    out = dict(extra)
    for key, value in metrics.items():  # NaN (e.g. no query with a relevant item) as null: JSON has no NaN
        number = float(value)
        out[key.split("/", 1)[-1]] = round(number, 6) if math.isfinite(number) else None
    print(json.dumps(out), flush=True)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def checkpoint_dirs(trainer_config) -> list[str]:
    """The fixed ``dirpath`` of every ModelCheckpoint callback in a parsed ``trainer`` config."""
    dirs = []
    for callback in _as_list(trainer_config.get("callbacks")):
        class_path = str(callback.get("class_path", ""))
        module_name, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError):
            continue
        dirpath = (callback.get("init_args") or {}).get("dirpath")
        if isinstance(cls, type) and issubclass(cls, ModelCheckpoint) and dirpath:
            dirs.append(str(dirpath))
    return dirs


def resolve_last(subcommand_config) -> Path:
    """The checkpoint ``--ckpt_path last`` means: the newest ``last*.ckpt`` in the config's ModelCheckpoint
    folders (``dirpath``, e.g. ``${trainer.default_root_dir}/checkpoints``). CbirError when the config
    has no fixed folder or the folder holds no last checkpoint, rather than starting from scratch."""
    dirs = checkpoint_dirs(subcommand_config.get("trainer") or {})
    if not dirs:
        raise CbirError(
            "--ckpt_path last needs a ModelCheckpoint callback with a fixed folder: add "
            "`dirpath: ${trainer.default_root_dir}/checkpoints` to its init_args, or pass the .ckpt file"
        )
    found = last_checkpoint(dirs)
    if found is None:
        raise CbirError(
            f"--ckpt_path last: no last.ckpt in {', '.join(dirs)}; check --trainer.default_root_dir "
            "(the run's output folder), pass the .ckpt file, or drop --ckpt_path to start a new run"
        )
    return found


def note_previous_run(subcommand_config) -> None:
    """One line on stderr when a new ``fit`` starts in a checkpoint folder that holds a previous run's
    ``last.ckpt`` (which this run overwrites at its first epoch end)."""
    dirs = checkpoint_dirs(subcommand_config.get("trainer") or {})
    previous = last_checkpoint(dirs) if dirs else None
    if previous is not None:
        sys.stderr.write(
            f"cbir-lightning: note: starting a new run; it will overwrite {previous} of a previous run "
            "(to continue that run instead, pass --ckpt_path last)\n"
        )


# DataModule arguments that count something (at least 1; ``num_workers`` at least 0)
DATA_COUNTS = (
    "batch_size", "eval_batch_size", "epoch_length", "classes_per_batch", "samples_per_class", "ways",
    "shots", "trials", "image_size", "query_size", "pool_size",
)  # fmt: skip


def check_data(datamodule: pl.LightningDataModule, stage: str) -> None:
    """Before a run writes anything (its W&B run folder, ``config.yaml``): CbirError (one line naming the
    key) for a count in ``data.init_args`` below its minimum, and the DataModule's data read
    (``setup(stage)``, which Lightning's own call then finds done), so a missing data folder is one line
    and leaves no run behind. A DataModule with ``download: true`` reads its data after Lightning's
    ``prepare_data`` has fetched it."""
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    for key, value in hparams.items():
        minimum = 0 if key == "num_workers" else 1 if key in DATA_COUNTS else None
        if minimum is not None and isinstance(value, int) and not isinstance(value, bool) and value < minimum:
            raise CbirError(f"data.init_args.{key} is {value}; it must be {minimum} or more")
    if not hparams.get("download"):
        datamodule.setup(stage)


def check_reads_alike(recorded: dict | None, datamodule: pl.LightningDataModule, ckpt) -> None:
    """CbirError (one line) when the checkpoint's model reads images of another mode (grey ``L`` or colour
    ``RGB``, its recorded preprocessing) than the config's DataModule gives: a checkpoint of another model
    family or data set, which would fail deep in its first forward pass."""
    describe = getattr(datamodule, "preprocess_spec", None)
    given = describe() if describe is not None else None
    if recorded and given and recorded.get("mode") != given.get("mode"):
        raise CbirError(
            f"checkpoint {ckpt} reads {recorded.get('mode')} images but the config's "
            f"{type(datamodule).__name__} gives {given.get('mode')} ones; pass the config it was trained with"
        )


class CbirCLI(LightningCLI):
    """LightningCLI that resumes ``--ckpt_path last`` from the config's checkpoint folder (or says why it
    cannot), rebuilds a checkpoint's module from the checkpoint alone, stops a diverging ``fit`` at its
    first non-finite loss, and reports each run as one JSON line."""

    restoring = False
    recorded_preprocess: dict | None = None  # the preprocessing the --ckpt_path records, if any

    def _parse_ckpt_path(self) -> None:
        """Resolve ``last``, check the file (one-line errors), and put its model hyperparameters into the
        config (what LightningCLI does), without the pretrained sources the checkpoint makes redundant."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if subcommand == "fit" and not ckpt:
            note_previous_run(self.config[subcommand])
        if not ckpt or ckpt in LIGHTNING_CKPT_NAMES:
            return
        if ckpt == "last":
            ckpt = str(resolve_last(self.config[subcommand]))
            self.config[subcommand]["ckpt_path"] = ckpt
            action = "resuming from" if subcommand == "fit" else "checkpoint"
            sys.stderr.write(f"cbir-lightning: {action} {ckpt}\n")
        checkpoint = module_checkpoint(check_checkpoint(ckpt))
        self.recorded_preprocess = checkpoint.contents.get(RECORD_KEY)
        model = checkpoint.model_config()
        if not model:
            return
        self.restoring = True
        try:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def instantiate_classes(self) -> None:
        """As LightningCLI; a module rebuilt for a checkpoint does not warn that it has no pretrained
        weights (they come from the checkpoint)."""
        with warnings.catch_warnings():
            if self.restoring:
                warnings.filterwarnings("ignore", message=".*no pretrained weights.*")
            super().instantiate_classes()

    def _instantiate_trainer(self, config: dict, callbacks: list) -> pl.Trainer:
        """Every ``fit`` stops at its first non-finite training loss (``StopOnNonFinite``) and keeps the
        global random generators in its checkpoints (``RandomState``: a resumed run draws what the
        uninterrupted one drew); every checkpoint is written atomically in its folder, a failed write is
        one line (``AtomicCheckpointIO``, unless the config names another CheckpointIO); the progress bar
        is tqdm's unless the config names one."""
        listed = [*_as_list(config.get("callbacks")), *callbacks]
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in listed
        ):  # tqdm's bar whether or not `rich` is installed (Lightning picks Rich's when it is)
            callbacks = [*callbacks, TQDMProgressBar()]
        if self.subcommand == "fit":
            for kind in (StopOnNonFinite, RandomState):
                if not any(isinstance(c, kind) for c in listed):
                    callbacks = [*callbacks, kind()]
        plugins = _as_list(config.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config = {**config, "plugins": [*plugins, AtomicCheckpointIO()]}
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        check_data(self.datamodule, "fit")
        interruptible()

    def before_validate(self) -> None:
        check_data(self.datamodule, "validate")
        self._check_reads_alike()
        interruptible()

    def before_test(self) -> None:
        check_data(self.datamodule, "test")
        self._check_reads_alike()
        interruptible()

    def before_predict(self) -> None:
        self._check_reads_alike()
        interruptible()

    def _check_reads_alike(self) -> None:
        ckpt = self.config[self.subcommand].get("ckpt_path")
        check_reads_alike(self.recorded_preprocess, self.datamodule, ckpt)

    def after_fit(self) -> None:
        trainer = self.trainer
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if trainer.interrupted:
            return
        results = trainer.validate(
            self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False
        )
        report(trainer, results[0] if results else {}, checkpoint=str(Path(best).resolve()) if best else None)

    def after_validate(self) -> None:
        report(
            self.trainer,
            self.trainer.callback_metrics,
            checkpoint=self.config[self.subcommand].get("ckpt_path"),
        )

    def after_test(self) -> None:
        report(
            self.trainer,
            self.trainer.callback_metrics,
            checkpoint=self.config[self.subcommand].get("ckpt_path"),
        )


def run_lightning_cli(args: list[str] | None, run: bool = True) -> CbirCLI:
    """Run LightningCLI; argument errors raise ``jsonargparse.ArgumentError`` (reported as one line).

    ``omegaconf+`` resolves ``${...}`` interpolations after the config files and command-line overrides
    are merged, so ``--data.init_args.image_size 40`` also changes ``${data.init_args.image_size}``;
    interpolation paths in configs are written from the config's root (``${trainer.max_epochs}``).
    ``run=False``: only build the config's model, DataModule and trainer (no subcommand, nothing saved).
    """
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    args, overrides = split_callback_overrides(args, callback_names(args)) if args else (args, {})
    token = CALLBACK_OVERRIDES.set(overrides)
    try:
        return _run_lightning_cli(args, run)
    except MisconfigurationException as err:  # Lightning's own user error, e.g. resuming past max_epochs
        raise CbirError(" ".join(str(err).split())) from err
    finally:
        CALLBACK_OVERRIDES.reset(token)


def _run_lightning_cli(args: list[str] | None, run: bool) -> CbirCLI:
    with warnings.catch_warnings():
        # `args` is `cbir-lightning`'s own argv (rewritten for `evaluate`), or build_from_config's tokens
        # (a notebook kernel's sys.argv is not ours): LightningCLI would warn as if a script passed both
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return _cli(args, run)


def _cli(args: list[str] | None, run: bool) -> CbirCLI:
    return CbirCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        parser_class=ConfigParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback if run else None,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "parser_mode": "omegaconf+",
            "exit_on_error": False,
            # each subcommand's description: its line in `cbir-lightning --help`
            **{name: {"description": line} for name, line in LIGHTNING_COMMANDS.items()},
        },
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def build_from_config(
    config: str | Path, *overrides: str
) -> tuple[pl.LightningModule, pl.LightningDataModule, pl.Trainer]:
    """``(model, datamodule, trainer)`` exactly as ``cbir-lightning fit --config CONFIG OVERRIDES...``
    builds them (base configs, overrides, interpolations resolved, seed set), without running anything:
    for notebooks and scripts, e.g. ``trainer.fit(model, datamodule=datamodule)``.

    ``overrides`` are command-line tokens (``"--trainer.max_steps=5"``,
    ``"--data.init_args.image_size=64"``). Unlike ``fit``, the trainer has no ``StopOnNonFinite``
    callback unless the config names it. A bad key raises ``jsonargparse.ArgumentError``.
    """
    cli = run_lightning_cli(["--config", str(config), *overrides], run=False)
    return cli.model, cli.datamodule, cli.trainer


CONFIG_CHECKPOINT = "config.ckpt"


def config_checkpoint(
    config: str | Path, out: str | Path | None = None, overrides: tuple | list = ()
) -> Path:
    """Write the model of ``config`` with its own weights (e.g. an ImageNet-pretrained baseline, untrained:
    what ``evaluate --config`` scores) as a checkpoint in ``fit``'s format, so ``index``, ``search``,
    ``export`` and the Python API take it like any trained one. The module and DataModule are built as
    ``fit`` builds them (``overrides``: ``--data.*`` / ``--model.*`` flags), seeded by the config.

    ``out``: default ``<trainer.default_root_dir>/checkpoints/config.ckpt``, beside ``fit``'s checkpoints
    of that config. Written atomically; returns the path.
    """
    if not Path(config).is_file():
        raise CbirError(f"config file {config} not found; pass a YAML config such as configs/<name>.yaml")
    model, datamodule, trainer = build_from_config(config, "--trainer.logger", "false", *overrides)
    if out is None:
        out = Path(trainer.default_root_dir) / "checkpoints" / CONFIG_CHECKPOINT
    out = Path(out)
    contents = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": pl.__version__,
        "state_dict": model.state_dict(),
        "hyper_parameters": self_contained(dict(model.hparams), model.state_dict()),
        "datamodule_hyper_parameters": dict(datamodule.hparams),
    }
    with atomic_file(out) as tmp:  # 0644, as a checkpoint `fit` writes
        torch.save(contents, tmp)
    return out
