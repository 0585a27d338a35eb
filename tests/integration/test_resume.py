"""Training that survives a kill: a ``fit`` SIGKILLed mid-epoch resumes with ``--ckpt_path last`` (or from a
mid-epoch checkpoint) to the same weights, losses and metrics as an uninterrupted run, bit for bit, every
output of a run lands under ``--trainer.default_root_dir``, and a checkpoint is validated from the
checkpoint alone (its pretrained source files may be gone)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from helpers.cli import TINY_ARGS, TINY_GEM_DATA, last_json, run_cli
from helpers.paths import REPO, TESTS

from cbir_lightning.callbacks.metrics_history import read_history
from cbir_lightning.cli.config_files import read_config
from cbir_lightning.whitening import save_whitening

CONFIG = str(REPO / "configs" / "omniglot_koch.yaml")
STEPS_PER_EPOCH = 4  # TINY_ARGS' epoch_length
EPOCHS = 3
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# what a resume must carry over: a loader worker (its sampler's epoch and position, its workers' seed),
# a loss that draws from Python's, NumPy's and torch's global generators, and a checkpoint at every step
EXACT_ARGS = [
    "--data.init_args.num_workers",
    "1",
    "--model.init_args.batch_loss.class_path",
    "helpers.resume.GlobalRandomLoss",
    "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
    "--trainer.callbacks.filename={step}",
    "--trainer.callbacks.every_n_train_steps=1",
    "--trainer.callbacks.save_top_k=-1",
]


def _fit(omniglot_root, cwd: Path, out: Path, step_log: Path, *extra: str, kill_at: int | None = None):
    """A 3-epoch tiny ``fit`` of the demo config writing under ``out``; helpers/resume.py's StepLog logs
    each training step's loss to ``step_log`` and SIGKILLs the process when step ``kill_at`` starts."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {
        **ONE_THREAD,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "CBIR_TEST_STEP_LOG": str(step_log),
        "CBIR_TEST_KILL_AT_STEP": "" if kill_at is None else str(kill_at),
    }
    args = ["fit", "--config", CONFIG, "--data.init_args.root", str(omniglot_root), *TINY_ARGS]
    args += ["--trainer.max_epochs", str(EPOCHS), "--trainer.default_root_dir", str(out)]
    args += [*EXACT_ARGS, f"--trainer.callbacks.dirpath={out / 'steps'}"]
    args += ["--trainer.callbacks+=helpers.resume.StepLog", *extra]
    return run_cli(args, cwd=cwd, env=env)


def _losses(step_log: Path) -> dict[int, str]:
    """Step -> its training loss (``float.hex``)."""
    rows = (line.split() for line in step_log.read_text().splitlines())
    return {int(step): loss for step, loss in rows}


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(got, expected, where: str = "") -> None:
    """``got`` equals ``expected``: the same nesting, every tensor ``torch.equal``, other values ``==``."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            _assert_same_tensors(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            _assert_same_tensors(a, b, f"{where}/{i}")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), where
    else:
        assert got == expected, where


def _assert_same_run(resumed: Path, whole: Path, resumed_result: dict, whole_result: dict) -> None:
    """The resumed run's per-epoch metrics, final result, weights and optimizer state are the
    uninterrupted run's, exactly."""
    assert read_history(resumed / "metrics.jsonl") == read_history(whole / "metrics.jsonl")
    got, expected = dict(resumed_result), dict(whole_result)
    got_best, expected_best = Path(got.pop("checkpoint")), Path(expected.pop("checkpoint"))
    assert got_best.parent == resumed / "checkpoints" and got_best.name == expected_best.name
    assert got == expected
    a, b = _checkpoint(whole / "checkpoints/last.ckpt"), _checkpoint(resumed / "checkpoints/last.ckpt")
    _assert_same_tensors(b["state_dict"], a["state_dict"], "state_dict")
    _assert_same_tensors(b["optimizer_states"], a["optimizer_states"], "optimizer")
    _assert_same_tensors(b["lr_schedulers"], a["lr_schedulers"], "lr_schedulers")


@pytest.fixture(scope="module")
def uninterrupted(omniglot_root, tmp_path_factory) -> dict:
    """The uninterrupted 3-epoch run: its folder, per-step losses and final result."""
    base = tmp_path_factory.mktemp("whole")
    proc = _fit(omniglot_root, base / "cwd", base / "out", base / "steps.log")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every output of the run is under --trainer.default_root_dir, nothing in the working directory
    assert list((base / "cwd").iterdir()) == []
    assert {p.name for p in (base / "out").iterdir()} >= {"checkpoints", "wandb", "config.yaml"}
    losses = _losses(base / "steps.log")
    assert sorted(losses) == list(range(EPOCHS * STEPS_PER_EPOCH))
    return {"out": base / "out", "losses": losses, "result": last_json(proc.stdout)}


def _kill_and_resume(omniglot_root, tmp_path: Path, ckpt: str):
    """A run SIGKILLed when the third batch of epoch 1 starts (its last.ckpt is epoch 0's), then resumed
    in its folder from ``ckpt`` (``last``, or a path relative to the folder): the resumed process, the
    folder and the resumed steps' losses."""
    kill_at, out, log = STEPS_PER_EPOCH + 2, tmp_path / "out", tmp_path / "steps.log"
    killed = _fit(omniglot_root, tmp_path / "cwd", out, log, kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sorted(_losses(log)) == list(range(kill_at))
    log.unlink()
    ckpt_arg = ckpt if ckpt == "last" else str(out / ckpt)
    proc = _fit(omniglot_root, tmp_path / "cwd", out, log, "--ckpt_path", ckpt_arg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, _losses(log)


def test_killed_fit_resumes_from_last_to_the_uninterrupted_result(omniglot_root, uninterrupted, tmp_path):
    proc, out, losses = _kill_and_resume(omniglot_root, tmp_path, "last")
    assert "resuming from" in proc.stderr and "last.ckpt" in proc.stderr
    # it went on from the end of epoch 0, each step with the uninterrupted run's loss, bit for bit
    assert sorted(losses) == list(range(STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH))
    assert losses == {step: uninterrupted["losses"][step] for step in losses}
    _assert_same_run(out, uninterrupted["out"], last_json(proc.stdout), uninterrupted["result"])


def test_killed_fit_resumes_from_a_mid_epoch_checkpoint_to_the_uninterrupted_result(
    omniglot_root, uninterrupted, tmp_path
):
    step = STEPS_PER_EPOCH + 2  # global step 6: written after the second batch of epoch 1
    proc, out, losses = _kill_and_resume(omniglot_root, tmp_path, f"steps/step={step}.ckpt")
    assert sorted(losses) == list(range(step, EPOCHS * STEPS_PER_EPOCH))
    assert losses == {s: uninterrupted["losses"][s] for s in losses}
    _assert_same_run(out, uninterrupted["out"], last_json(proc.stdout), uninterrupted["result"])


def test_resuming_past_the_epochs_asked_for_is_one_line(omniglot_root, uninterrupted, tmp_path):
    """``--ckpt_path last`` of the finished 3-epoch run with ``max_epochs 1``: Lightning's
    MisconfigurationException is one line (a traceback before), and the checkpoint is left as it was."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(uninterrupted["out"] / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")
    kept = (out / "checkpoints" / "last.ckpt").read_bytes()
    args = ("--ckpt_path", "last", "--trainer.max_epochs", "1")
    proc = _fit(omniglot_root, tmp_path / "cwd", out, tmp_path / "steps.log", *args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("cbir-lightning: error: You restored a checkpoint with current_epoch=2"), line
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == kept


def test_resume_without_last_checkpoint_is_one_line(omniglot_root, tmp_path):
    proc = run_cli(
        [
            "fit",
            "--config",
            CONFIG,
            "--data.init_args.root",
            str(omniglot_root),
            *TINY_ARGS,
            "--trainer.default_root_dir",
            str(tmp_path / "empty"),
            "--ckpt_path",
            "last",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("cbir-lightning: error:") and "no last.ckpt" in line
    assert str(tmp_path / "empty" / "checkpoints") in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_validate_gem_checkpoint_without_its_pretrained_files(omniglot_root, tmp_path):
    """GeM trained from a local backbone file and a whitening_init file: once both are gone,
    ``validate --ckpt_path`` still rebuilds the module (from the checkpoint alone) and gives fit's numbers."""
    weights, init = tmp_path / "resnet18-local.pth", tmp_path / "init.whitening.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    save_whitening(init, {"kind": "pca", "mean": torch.zeros(512), "projection": torch.randn(16, 512)})
    config = read_config(REPO / "configs" / "omniglot_gem.yaml")
    config["data"]["init_args"].update(TINY_GEM_DATA, root=str(omniglot_root))
    config["model"]["init_args"].update(weights=str(weights), whitening_init=str(init))
    config["trainer"]["max_epochs"] = 1
    path = tmp_path / "gem_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    fit = run_cli(["fit", "--config", str(path)], cwd=tmp_path, env=ONE_THREAD)
    assert fit.returncode == 0, fit.stderr[-3000:]
    trained = last_json(fit.stdout)
    assert _checkpoint(Path(trained["checkpoint"]))["state_dict"]["whiten.weight"].shape == (16, 512)

    weights.unlink()
    init.unlink()
    proc = run_cli(
        ["validate", "--config", str(path), "--ckpt_path", trained["checkpoint"]],
        cwd=tmp_path,
        env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no pretrained weights" not in proc.stderr
    result = last_json(proc.stdout)
    for key in ("mAP", "recall@1", "oneshot_5way"):
        assert math.isclose(result[key], trained[key], abs_tol=1e-6), key
