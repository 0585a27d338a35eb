"""Checkpoints written before the issue-14 redesign, converted to model files, evaluate to the same numbers.

``tests/fixtures/legacy/`` holds tiny checkpoints of each model family (Koch on Omniglot, GeM with a
whitening layer and a post-hoc whitening file on a photo collection, DSH on CIFAR-10) with the run's
``config.yaml``, written by ``make_fixtures.py`` with the code before the redesign, and ``expected.json``:
the commands a user evaluated them with and what that code printed. Their loss names and old paths are
understood by the converter only (``cbir-lightning convert``, ``ModelFile.from_checkpoint``): each test
converts the checkpoint, then repeats the commands through the ``cbir-lightning`` CLI on the model file
(``validate``/``evaluate --ckpt_path X.model`` with the run's config, whose model section is the model
file's, as a config of today names its losses by class path) and compares: metrics (printed rounded to 6
decimals) exactly, index vectors within 1e-6, search results by path and order (scores within 1e-6, one
unit of their printed rounding). Loading must not warn about missing or unexpected state-dict keys.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures.legacy.make_fixtures import read_index_rows
from helpers.paths import REPO, SHARED_DATA

from cbir_lightning.model_file import ModelFile

FIXTURES = REPO / "tests" / "fixtures" / "legacy"
SHARED = SHARED_DATA
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
CHECKPOINTS = EXPECTED["checkpoints"]
KEY_WARNING = re.compile(
    r"missing key|unexpected key|missing_keys|unexpected_keys|not in the model state dict|"
    r"were not used|weights? (?:not|were not) (?:initiali[sz]ed|loaded)",
    re.IGNORECASE,
)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m cbir_lightning ARGS`` with the current environment; warnings shown, W&B offline."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "default"})
    return subprocess.run(
        [sys.executable, "-m", "cbir_lightning", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def last_json(stdout: str):
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])


def substitute(args: list[str], tmp: Path) -> list[str]:
    return [a.format(fixtures=FIXTURES, shared=SHARED, tmp=tmp) for a in args]


def relative(path: str) -> str:
    return Path(path).resolve().relative_to(SHARED.resolve()).as_posix()


def check(command: dict, proc: subprocess.CompletedProcess, tmp: Path) -> None:
    args = substitute(command["args"], tmp)
    assert proc.returncode == 0, f"cbir-lightning {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    warned = [line for line in (proc.stderr + proc.stdout).splitlines() if KEY_WARNING.search(line)]
    assert not warned, f"cbir-lightning {' '.join(args)} warned about state-dict keys: {warned}"
    result = last_json(proc.stdout)
    kind = command["kind"]
    if kind in ("validate", "evaluate"):
        result.pop("checkpoint", None)
        assert result == command["metrics"]
    elif kind == "search":
        got = [(relative(r["path"]), r["score"]) for r in result]
        want = [(r["path"], r["score"]) for r in command["results"]]
        assert [p for p, _ in got] == [p for p, _ in want]
        assert np.allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-6), (got, want)
    elif kind == "index":
        assert result.get("count") == command["count"], result  # images indexed
        images = Path(args[args.index("--images") + 1])
        out = Path(args[args.index("--out") + 1])
        rows = read_index_rows(out, images, list(command["embeddings"]), SHARED)
        for path, vector in command["embeddings"].items():
            got, want = torch.from_numpy(rows[path]).double(), torch.tensor(vector, dtype=torch.float64)
            assert got.shape == want.shape, (path, got.shape, want.shape)
            assert torch.allclose(got, want, rtol=0, atol=1e-6), (path, (got - want).abs().max())
    else:
        raise AssertionError(f"unknown command kind {kind!r} in expected.json")


def test_fixtures_are_complete_and_small():
    total = 0
    for name, entry in CHECKPOINTS.items():
        for file in entry["files"]:
            path = FIXTURES / name / file
            assert path.is_file(), path
            assert path.stat().st_size < 1_000_000, path
            total += path.stat().st_size
        assert any(c["kind"] in ("validate", "evaluate") for c in entry["commands"]), name
    assert total < 3_000_000


def converted(name: str, tmp: Path) -> dict[str, str]:
    """``cbir-lightning convert`` of fixture ``name``'s checkpoint (its whitening file beside it), and the
    run's config with the model file's model section: what each command's checkpoint and config become."""
    ckpt = FIXTURES / name / "model.ckpt"
    model_file = tmp / f"{name}.model"
    proc = run(["convert", "--ckpt", str(ckpt), "--out", str(model_file)], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout)["whitening"] == (FIXTURES / name / "model.whitening.pt").is_file()
    config = yaml.safe_load((FIXTURES / name / "config.yaml").read_text())
    config["model"] = ModelFile.load(model_file).checkpoint().model_config()
    config_file = tmp / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return {
        f"{{fixtures}}/{name}/model.ckpt": str(model_file),
        f"{{fixtures}}/{name}/config.yaml": str(config_file),
    }


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_legacy_checkpoint_converted_evaluates_as_before(name, tmp_path):
    entry = CHECKPOINTS[name]
    needed = {a for c in entry["commands"] for a in c["args"] if a.startswith("{shared}/")}
    for path in sorted(needed):
        if not Path(path.format(shared=SHARED)).exists():
            pytest.skip(f"shared data {path.format(shared=SHARED)} not found")
    replaced = converted(name, tmp_path)
    for command in entry["commands"]:  # in order: search reads the index written before it
        args = [replaced.get(a, a) for a in command["args"]]
        check(command, run(substitute(args, tmp_path), cwd=tmp_path), tmp_path)


def test_legacy_checkpoints_load_only_converted(tmp_path):
    """Ordinary loading takes today's hyperparameters only: validating the Koch fixture
    (``batch_loss: softmax``) unconverted is one line naming the key."""
    ckpt = FIXTURES / "koch_omniglot" / "model.ckpt"
    proc = run(["validate", "--config", str(FIXTURES / "koch_omniglot" / "config.yaml"), "--ckpt_path",
                str(ckpt), "--trainer.logger", "false"], tmp_path)  # fmt: skip
    assert proc.returncode != 0 and "batch_loss" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_checkpoint_with_arguments_no_longer_taken_is_one_line_naming_them(tmp_path):
    """A checkpoint from between the redesigns (losses already objects, but ``margin`` / ``loss_kwargs`` /
    ``miner_kwargs`` still recorded): ``evaluate --ckpt`` with a config of today is one line naming those
    arguments and ``convert``, not a traceback from instantiating the module."""
    contents = torch.load(FIXTURES / "gem_wikiart" / "model.ckpt", map_location="cpu", weights_only=True)
    contents["hyper_parameters"]["loss"] = {
        "class_path": "pytorch_metric_learning.losses.MultiSimilarityLoss"
    }
    contents["hyper_parameters"]["miner"] = None
    ckpt = tmp_path / "between.ckpt"
    torch.save(contents, ckpt)
    config = REPO / "configs" / "wikiart_finetune.yaml"
    args = ["evaluate", "--config", str(config), "--ckpt", str(ckpt), "--data.root", str(tmp_path)]
    proc = run(args, tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cbir-lightning: error:") and str(ckpt) in last, last
    assert all(word in last for word in ("margin", "loss_kwargs", "miner_kwargs", "cbir-lightning convert"))
