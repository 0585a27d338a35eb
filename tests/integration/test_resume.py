"""Training that survives a kill: a ``fit`` SIGKILLed mid-epoch resumes with ``--ckpt_path last`` to the
same weights and metrics as an uninterrupted run, every output of a run lands under
``--trainer.default_root_dir``, and a checkpoint is validated from the checkpoint alone (its pretrained
source files may be gone)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torchvision
import yaml
from helpers.cli import TINY_ARGS, TINY_GEM_DATA, last_json, run_cli
from helpers.paths import REPO, TESTS

from cbir_lightning.cli.config_files import read_config
from cbir_lightning.whitening import save_whitening

CONFIG = str(REPO / "configs" / "omniglot_koch.yaml")
STEPS_PER_EPOCH = 4  # TINY_ARGS' epoch_length
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _fit(omniglot_root, cwd: Path, out: Path, step_log: Path, *extra: str, kill_at: int | None = None):
    """A 3-epoch tiny ``fit`` of the demo config writing under ``out``; helpers/resume.py's StepLog logs
    each training step it starts to ``step_log`` and SIGKILLs the process at step ``kill_at``."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {
        **ONE_THREAD,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "CBIR_TEST_STEP_LOG": str(step_log),
        "CBIR_TEST_KILL_AT_STEP": "" if kill_at is None else str(kill_at),
    }
    args = ["fit", "--config", CONFIG, "--data.init_args.root", str(omniglot_root), *TINY_ARGS]
    args += ["--trainer.max_epochs", "3", "--trainer.default_root_dir", str(out)]
    args += ["--trainer.callbacks+=helpers.resume.StepLog", *extra]
    return run_cli(args, cwd=cwd, env=env)


def _steps(step_log: Path) -> list[int]:
    return [int(line) for line in step_log.read_text().split()]


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_killed_fit_resumes_to_the_uninterrupted_result(omniglot_root, tmp_path):
    whole = _fit(omniglot_root, tmp_path / "cwd_a", tmp_path / "a", tmp_path / "a.steps")
    assert whole.returncode == 0, whole.stderr[-3000:]
    # every output of the run is under --trainer.default_root_dir, nothing in the working directory
    assert list((tmp_path / "cwd_a").iterdir()) == []
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"checkpoints", "wandb", "config.yaml"}
    assert (tmp_path / "a" / "checkpoints" / "last.ckpt").is_file()

    kill_at = 2 * STEPS_PER_EPOCH + 2  # third epoch, third batch
    killed = _fit(omniglot_root, tmp_path / "cwd_b", tmp_path / "b", tmp_path / "b.steps", kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _steps(tmp_path / "b.steps")[-1] == kill_at
    (tmp_path / "b.steps").unlink()

    resumed = _fit(
        omniglot_root, tmp_path / "cwd_b", tmp_path / "b", tmp_path / "b.steps", "--ckpt_path", "last"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # it went on from the last finished epoch, not from epoch 0
    assert _steps(tmp_path / "b.steps") == list(range(2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH))
    assert "resuming from" in resumed.stderr and "last.ckpt" in resumed.stderr

    expected, got = last_json(whole.stdout), last_json(resumed.stdout)
    assert Path(got["checkpoint"]).parent == (tmp_path / "b" / "checkpoints")
    assert {k: v for k, v in got.items() if k != "checkpoint"} == {
        k: v for k, v in expected.items() if k != "checkpoint"
    }
    a, b = _weights(tmp_path / "a/checkpoints/last.ckpt"), _weights(tmp_path / "b/checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


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
    assert _weights(Path(trained["checkpoint"]))["whiten.weight"].shape == (16, 512)

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
