"""A full disk, for real: ``fit`` and ``index`` writing to a small tmpfs that fills up stop with one line,
and what they wrote before stays complete (no truncated checkpoint under its final name, the previous index
served as before)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from helpers.cli import TINY_ARGS, run_cli
from helpers.faults import fill, small_tmpfs
from helpers.paths import REPO, TESTS
from helpers.search import photo_folder
from PIL import Image

from cbir_lightning.search.index import build_index
from cbir_lightning.search.manifest import current_version, read_manifest
from cbir_lightning.search.query import SearchIndex

CPU = {"accelerator": "cpu", "enable_progress_bar": False}


def _one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("cbir-lightning: error: "), stderr[-3000:]
    return line


def test_fit_on_a_full_disk_stops_with_one_line_and_leaves_no_truncated_checkpoint(omniglot_root, tmp_path):
    """The disk fills at the end of epoch 0 with 8 KB left, less than a checkpoint (Lightning's own writer
    left an 8 KB ``best-epoch=00.ckpt`` that does not load, and a traceback): one line, and no file in
    the checkpoint folder but complete checkpoints (none here), no temporary file."""
    with small_tmpfs(tmp_path / "disk") as disk:
        out = disk / "run"
        env = {
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "CBIR_TEST_FILL_DIR": str(disk),
            "CBIR_TEST_FILL_EPOCH": "0",
            "CBIR_TEST_FILL_LEAVE": str(8 * 1024),
        }
        args = ["fit", "--config", str(REPO / "configs" / "omniglot_koch.yaml")]
        args += ["--data.init_args.root", str(omniglot_root), *TINY_ARGS, "--trainer.max_epochs", "2"]
        args += ["--trainer.default_root_dir", str(out), "--trainer.callbacks+=helpers.faults.FillDisk"]
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "wandb")]  # W&B off the small disk
        proc = run_cli(args, cwd=tmp_path, env=env)
        assert proc.returncode == 1, proc.stderr[-3000:]
        line = _one_line_error(proc.stderr)
        assert f"cannot write the checkpoint {out / 'checkpoints'}/" in line
        assert "(No space left on device)" in line
        written = sorted((out / "checkpoints").iterdir()) if (out / "checkpoints").exists() else []
        assert all(p.suffix == ".ckpt" for p in written), written  # no temporary file
        for path in written:
            torch.load(path, map_location="cpu", weights_only=True)  # complete: it loads


def test_index_on_a_full_disk_stops_with_one_line_and_keeps_the_old_index(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=4)
    with small_tmpfs(tmp_path / "disk") as disk:
        out = disk / "idx"
        build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
        live, before = current_version(out), read_manifest(out)[0]
        for i in range(3):
            Image.open(photos / "bodleian_000132.jpg").rotate(30 * (i + 1)).save(photos / f"r{i}.png")
        fill(disk)
        command = [sys.executable, "-m", "cbir_lightning", "index", "--ckpt", str(tiny_run["ckpt"])]
        command += ["--images", str(photos), "--out", str(out), "--accelerator", "cpu"]
        proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 1, proc.stderr[-3000:]
        line = _one_line_error(proc.stderr)
        assert line.startswith(f"cbir-lightning: error: cannot write the index in {out} (No space left")
        assert current_version(out) == live and read_manifest(out)[0] == before
        assert [p.name for p in out.iterdir() if p.name.startswith("v-")] == [live.name]
        assert not [p for p in out.iterdir() if p.name.endswith((".tmp", ".json"))]
        index = SearchIndex.open(out)
        assert len(index.items) == 4
        (disk / "filler").unlink()
        assert build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)["count"] == 7
