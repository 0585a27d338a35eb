"""The model file of a fit (``checkpoints/best.model``, ``cbir_lightning/model_file.py``): ``index`` and
``search`` run from it, and from the checkpoint, in a process where the ``data_modules`` package cannot be
imported, and give the vectors of today's path (the DataModule's ``eval_transform`` and the module); an
index of the checkpoint is reused with its model file; the model file's module embeds as the checkpoint's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import last_json
from helpers.search import photo_folder, reference_vectors

from cbir_lightning.checkpoints import read_checkpoint
from cbir_lightning.model_file import FORMAT, RECORD_KEY, ModelFile
from cbir_lightning.search.index import build_index
from cbir_lightning.search.manifest import EMBEDDINGS, read_manifest

CPU = {"accelerator": "cpu", "enable_progress_bar": False}
DRIVER = (  # the CLI in a process where `import data_modules` fails
    "import sys\n"
    "sys.modules['data_modules'] = None\n"
    "from cbir_lightning.cli import main\n"
    "main(sys.argv[1:])\n"
)


def run_without_data_modules(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    driver = cwd / "without_data_modules.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(driver), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def best_model(tiny_run) -> Path:
    return Path(tiny_run["ckpt"]).parent / "best.model"


def test_fit_writes_the_model_file_of_its_best_checkpoint(tiny_run, best_model):
    assert best_model.is_file()
    data = torch.load(best_model, map_location="cpu", weights_only=True)
    checkpoint = read_checkpoint(tiny_run["ckpt"])
    assert data["format"] == FORMAT and data["identity"] == checkpoint.identity
    assert checkpoint.contents[RECORD_KEY] == data["preprocess"]  # every checkpoint records it
    assert data["preprocess"] == {
        "mode": "L", "invert": True, "resize": "area", "size": 28, "mean": None, "std": None
    }  # fmt: skip
    assert data["similarity"] == "model" and data["dim"] == 32  # Koch: a learned L1 head
    assert data["provenance"]["config"] and data["provenance"]["best"]  # Koch: {"val/oneshot_20way": ..}


def test_the_model_files_module_embeds_as_the_checkpoints(tiny_run, best_model):
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = read_checkpoint(tiny_run["ckpt"]).module().embed(images)
        assert torch.equal(ModelFile.from_checkpoint(tiny_run["ckpt"]).module().embed(images), want)
        assert torch.equal(ModelFile.load(best_model).module().embed(images), want)


@pytest.mark.parametrize("which", ["model_file", "checkpoint"])
def test_index_and_search_without_the_data_modules_package(tiny_run, best_model, tmp_path, which):
    photos = photo_folder(tmp_path / "photos", count=8)
    model = best_model if which == "model_file" else Path(tiny_run["ckpt"])
    out = tmp_path / "idx"
    args = ["index", "--ckpt", str(model), "--images", str(photos), "--out", str(out), "--accelerator", "cpu"]
    proc = run_without_data_modules(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout)["count"] == 8
    manifest, version = read_manifest(out)
    paths = [item["path"] for item in manifest["items"]]
    expected = reference_vectors(tiny_run["ckpt"], [photos / p for p in paths])  # today's path
    assert np.allclose(np.load(version / EMBEDDINGS), expected.numpy(), atol=1e-5)
    assert manifest["model"]["identity"] == read_checkpoint(tiny_run["ckpt"]).identity
    query = ["search", "--index", str(out), "--query", str(photos / paths[0]), "--top-k", "3"]
    proc = run_without_data_modules(query, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found[0]["path"]).name == Path(paths[0]).name and len(found) == 3


def test_an_index_of_the_checkpoint_is_reused_with_its_model_file(tiny_run, best_model, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=6)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    result = build_index(best_model, photos, out, trainer_options=CPU)
    assert (result["reused"], result["embedded"]) == (6, 0)
    query = str(next(photos.rglob("*.jpg")))
    for option in ("--ckpt", "--model"):  # --model takes a model file as well as an ONNX export
        args = ["search", "--index", str(out), option, str(best_model), "--query", query]
        proc = run_without_data_modules(args, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]


def test_convert_writes_the_same_model_and_refuses_a_foreign_file(tiny_run, tmp_path):
    out = tmp_path / "model.cbir"
    proc = run_without_data_modules(["convert", "--ckpt", str(tiny_run["ckpt"]), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout)["model_file"] == str(out)
    assert ModelFile.load(out).identity == read_checkpoint(tiny_run["ckpt"]).identity
    foreign = tmp_path / "foreign.model"
    torch.save({"weights": torch.zeros(2)}, foreign)
    photos = photo_folder(tmp_path / "photos", count=2)
    args = ["index", "--ckpt", str(foreign), "--images", str(photos), "--out", str(tmp_path / "idx")]
    proc = run_without_data_modules(args, tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and str(foreign) in proc.stderr
