"""``build_from_config``: the model, DataModule and Trainer of ``fit --config`` from Python."""

from __future__ import annotations

import pytest
import torch
from helpers.paths import REPO, SHARED_DATA
from jsonargparse import ArgumentError

from cbir_lightning.cli.lightning_cli import build_from_config
from cbir_lightning.models import DSHModule
from data_modules import CIFAR10DataModule

QUIET = ("--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false")


def test_overrides_reach_the_objects_and_their_interpolations(tmp_path):
    model, data, trainer = build_from_config(
        REPO / "configs" / "cifar10_dsh.yaml",
        "--model.init_args.bits=48",
        "--data.init_args.image_size=40",
        "--trainer.max_epochs=2",
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
    )
    assert isinstance(model, DSHModule) and isinstance(data, CIFAR10DataModule)
    assert data.hparams.image_size == 40 and model.hparams.input_size == 40  # ${data.init_args.image_size}
    assert model.hparams.lr_scheduler["init_args"]["T_max"] == 2  # ${trainer.max_epochs}
    assert trainer.max_epochs == 2
    assert model.embed(torch.zeros(3, 3, 40, 40)).shape == (3, 48)


def test_a_misspelt_key_is_an_argument_error(tmp_path):
    with pytest.raises(ArgumentError, match="bitz"):
        build_from_config(REPO / "configs" / "cifar10_dsh.yaml", "--model.init_args.bitz=48", *QUIET)


@pytest.mark.skipif(not (SHARED_DATA / "cifar10").is_dir(), reason="needs ../shared/data/cifar10")
def test_the_trainer_fits_the_model_on_the_datamodule(tmp_path):
    model, data, trainer = build_from_config(
        REPO / "configs" / "cifar10_dsh.yaml",
        f"--data.init_args.root={SHARED_DATA / 'cifar10'}",
        "--data.init_args.train_per_class=4",
        "--data.init_args.database_per_class=4",
        "--data.init_args.query_per_class=1",
        "--data.init_args.samples_per_class=4",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_checkpointing=false",
        f"--trainer.default_root_dir={tmp_path}",
        *QUIET,
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_no_warning_about_args_and_argv_when_run_as_the_command(monkeypatch):
    """`cbir-lightning fit ...` hands LightningCLI its own argv; LightningCLI's warning about a script
    passing both args and argv would top every run's log."""
    import warnings

    from cbir_lightning.cli.lightning_cli import run_lightning_cli

    args = ["--config", str(REPO / "configs" / "cifar10_dsh.yaml"), *QUIET]
    monkeypatch.setattr("sys.argv", ["cbir-lightning", "fit", *args])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_lightning_cli(args, run=False)
    assert not [w for w in caught if "args parameter" in str(w.message)]
