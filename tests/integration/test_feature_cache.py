"""The feature cache in real ``cbir-lightning fit`` processes (configs/photos_finetune.yaml, real paintings):
a build killed with SIGKILL resumes where it stopped and computes only what is missing, and a fit from a
cold cache gives the same numbers and the same final weights as one from a warm cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import last_json
from helpers.paths import REPO, SHARED_DATA
from PIL import Image

pytestmark = pytest.mark.integration

WIKIART = SHARED_DATA / "wikiart_pd"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """6 artists x 6 paintings as class folders."""
    if not WIKIART.is_dir():
        pytest.skip(f"no {WIKIART}")
    root = tmp_path_factory.mktemp("photos")
    for artist in sorted(p for p in WIKIART.iterdir() if p.is_dir())[:6]:
        (root / artist.name).mkdir()
        for photo in sorted(artist.glob("*.jpg"))[:6]:
            shutil.copy(photo, root / artist.name / photo.name)
    return root


def write_config(folder: Path, photos: Path, cache: Path, image_size: int = 224) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(
        f"extends: {REPO / 'configs' / 'photos_finetune.yaml'}\n"
        f"data:\n  init_args:\n    root: {photos}\n    image_size: {image_size}\n    held_out_classes: 2\n"
        "    classes_per_batch: 4\n    samples_per_class: 2\n    epoch_length: 3\n    num_workers: 0\n"
        f"trainer:\n  max_epochs: 2\n  logger: false\n  default_root_dir: {folder / 'run'}\n"
        f"  callbacks:\n    feature_cache:\n      init_args:\n        root: {cache}\n        views: 2\n"
        "        shard_size: 2\n        num_workers: 0\n    unfreeze:\n      init_args:\n        epoch: 1\n"
    )
    return config


def fit(config: Path, args: tuple | list = (), **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cbir_lightning", "fit", "--config", str(config), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def entries(cache: Path) -> int:
    total = 0
    for index in cache.glob("*/index.sqlite"):
        db = sqlite3.connect(index, timeout=60)
        try:
            total += db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            pass
        finally:
            db.close()
    return total


def counts(stderr: str) -> dict[str, tuple[int, int]]:
    """``split -> (computed, read)`` from the cache's report lines."""
    out = {}
    for line in stderr.splitlines():
        if "feature cache" in line and "computed," in line:
            split = line.split(": ")[2].split()[0]
            computed, read = line.rsplit(": ", 1)[1].replace(" computed,", "").replace(" read", "").split()
            out[split] = (int(computed), int(read))
    return out


def finish(process: subprocess.Popen) -> tuple[dict, str]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return last_json(out), err


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_killed_build_resumes_and_cold_and_warm_caches_give_the_same_fit(tmp_path, photos):
    views_total = 24 * 3  # 24 training paintings x (evaluation view + 2 augmented views)
    warm = tmp_path / "warm_cache"
    process = fit(write_config(tmp_path / "killed", photos, warm))
    deadline = time.monotonic() + 300
    while entries(warm) < 6 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = entries(warm)
    assert 6 <= kept < views_total, f"the kill came too late to test a resume ({kept} views stored)"
    for shard in warm.glob("*/shards/*.npy"):  # a shard is whole or not there
        assert len(np.load(shard)) <= 2

    resumed, err = finish(fit(write_config(tmp_path / "resumed", photos, warm)))
    assert not list(warm.glob("*/shards/.*.tmp"))  # the killed writer's temporary shard is gone
    computed, read = counts(err)["train"]
    assert (computed, read) == (views_total - kept, kept)  # only what the kill left missing
    again, err = finish(fit(write_config(tmp_path / "again", photos, warm)))
    assert counts(err)["train"] == (0, views_total) and counts(err)["eval"] == (0, 12)

    cold, err = finish(fit(write_config(tmp_path / "cold", photos, tmp_path / "cold_cache")))
    assert counts(err)["train"] == (views_total, 0)
    for result in (resumed, again):
        assert {k: v for k, v in result.items() if k != "checkpoint"} == {
            k: v for k, v in cold.items() if k != "checkpoint"
        }
    cold_weights = weights(tmp_path / "cold" / "run")
    for name in ("resumed", "again"):
        other = weights(tmp_path / name / "run")
        assert other.keys() == cold_weights.keys()
        assert all(torch.equal(other[k], cold_weights[k]) for k in cold_weights)
    assert json.dumps(cold)  # a JSON line was printed
    index_and_search_with(Path(cold["checkpoint"]), photos, tmp_path)


def index_and_search_with(ckpt: Path, photos: Path, tmp_path: Path) -> None:
    """A checkpoint of the recipe (frozen trunk, head trained from the cache) indexes and searches like any
    other: the index holds the checkpoint module's embeddings of the photos, each photo finds itself."""
    from helpers.cli import run_cli

    from cbir_lightning.checkpoints import load_module
    from cbir_lightning.search.manifest import EMBEDDINGS, read_manifest
    from data_modules import PhotoCollectionDataModule

    proc = run_cli(["index", "--ckpt", str(ckpt), "--images", str(photos), "--out", "idx"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest, version = read_manifest(tmp_path / "idx")
    vectors = np.load(version / EMBEDDINGS)
    files = [photos / item["path"] for item in manifest["items"]]
    transform = PhotoCollectionDataModule(root=str(photos), image_size=224).eval_transform
    module = load_module(ckpt).eval()
    with torch.no_grad():
        expected = module.embed(torch.stack([transform(Image.open(f).convert("RGB")) for f in files]))
    assert len(files) == 36 and np.allclose(vectors, expected.numpy(), atol=1e-4)
    proc = run_cli(["search", "--index", "idx", "--query", str(files[7]), "--top-k", "3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(last_json(proc.stdout)[0]["path"]).name == files[7].name  # a list of hits, best first


def test_two_stage_fit_resumed_in_stage_two_equals_the_uninterrupted_fit(tmp_path, photos):
    """Stage 1 from the cache (epoch 0), the backbone unfrozen from epoch 1 on (images): a run of 1 epoch,
    resumed for a second (the switch when it starts) and a third (in stage 2) with ``--ckpt_path last``,
    ends with the weights and numbers of an uninterrupted 3-epoch run."""
    cache = tmp_path / "cache"
    whole = write_config(tmp_path / "whole", photos, cache, image_size=64)
    result, _ = finish(fit(whole, args=["--trainer.max_epochs", "3"]))
    part = write_config(tmp_path / "part", photos, cache, image_size=64)
    checkpoints = tmp_path / "part" / "run" / "checkpoints"
    finish(fit(part, args=["--trainer.max_epochs", "1"]))  # stage 1 only: a 1-epoch run never switches
    stage_one = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert stage_one["callbacks"]["Unfreeze"] == {"unfrozen": False, "next_epoch": 1}
    finish(fit(part, args=["--trainer.max_epochs", "2", "--ckpt_path", "last"]))  # switches as it starts
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["callbacks"]["Unfreeze"]["unfrozen"]
    resumed, err = finish(fit(part, args=["--trainer.max_epochs", "3", "--ckpt_path", "last"]))
    assert "resuming from" in err
    uninterrupted, again = weights(tmp_path / "whole" / "run"), weights(tmp_path / "part" / "run")
    assert all(torch.equal(uninterrupted[k], again[k]) for k in uninterrupted)
    first = next(k for k in uninterrupted if k.startswith("backbone.") and k.endswith(".weight"))
    assert not torch.equal(uninterrupted[first], stage_one["state_dict"][first])  # the first layer trained
    drop = ("checkpoint",)
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in result.items() if k not in drop
    }


def test_ddp_fills_the_cache_once_and_logs_the_single_process_numbers(tmp_path, photos):
    cache = tmp_path / "cache"
    config = write_config(tmp_path / "ddp", photos, cache, image_size=64)
    ddp_args = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "1"]  # stage 1
    ddp, err = finish(fit(config, args=ddp_args))
    assert entries(cache) == 24 * 3 + 12  # every training view and every evaluation view, once
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "cbir_lightning",
            "validate",
            "--config",
            str(config),
            "--ckpt_path",
            ddp["checkpoint"],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one = last_json(single.stdout)
    assert counts(single.stderr)["eval"] == (0, 12)  # evaluation reads the same cache
    for key in ("mAP", "mAP@R", "recall@1", "num_queries"):
        assert abs(ddp[key] - one[key]) < 1e-6, (key, ddp[key], one[key])
