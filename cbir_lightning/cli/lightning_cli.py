"""``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI with OmegaConf interpolation.

Every run ends with one JSON line: after ``fit`` the best checkpoint is validated and reported
(``checkpoint`` plus the validation metrics without their ``val/`` prefix); ``validate`` and ``test``
report their metrics the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
from jsonargparse import set_parsing_settings
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from cbir_lightning.checkpoints import check_checkpoint


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
    for key, value in metrics.items():
        out[key.split("/", 1)[-1]] = round(float(value), 6)
    print(json.dumps(out), flush=True)


class CbirCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters here: check the file first, for a clear error
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in ("best", "last", "hpc", "registry"):
            check_checkpoint(ckpt)
        super()._parse_ckpt_path()

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


def run_lightning_cli(args: list[str] | None) -> None:
    """Run LightningCLI; argument errors raise ``jsonargparse.ArgumentError`` (reported as one line).

    ``omegaconf+`` resolves ``${...}`` interpolations after the config files and command-line overrides
    are merged, so ``--data.init_args.image_size 40`` also changes ``${data.init_args.image_size}``;
    interpolation paths in configs are written from the config's root (``${trainer.max_epochs}``).
    """
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    CbirCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf+", "exit_on_error": False},
        args=args,
        auto_configure_optimizers=False,
    )
