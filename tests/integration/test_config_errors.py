"""Config values and runs that cannot work stop with one line (``cbir-lightning: error: ...``, exit 1, no
traceback): class-batch sizes the data cannot fill, a diverging run, a truncated W&B run file (untrusted
classes named by a checkpoint: tests/unit/test_config_errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.cli import TINY_ARGS, run_cli
from helpers.paths import REPO

from cbir_lightning.errors import CbirError
from cbir_lightning.wandb_offline import read_offline_run

CONFIG = str(REPO / "configs" / "omniglot_koch.yaml")


def _fit(omniglot_root, tmp_path, *extra: str):
    args = ["fit", "--config", CONFIG, "--data.init_args.root", str(omniglot_root), *TINY_ARGS, *extra]
    return run_cli(args, cwd=tmp_path)


def _error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("cbir-lightning: error:"), proc.stderr[-3000:]
    return line


@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        ("classes_per_batch", "5000", ["classes_per_batch is 5000", "1600 classes"]),
        ("samples_per_class", "1", ["samples_per_class is 1", "2 or more"]),
    ],
)
def test_class_batch_sizes_the_data_cannot_fill_are_one_line(omniglot_root, tmp_path, key, value, needles):
    line = _error_line(_fit(omniglot_root, tmp_path, f"--data.init_args.{key}", value))
    for needle in needles:
        assert needle in line, line
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.fixture(scope="module")
def diverged(omniglot_root, tmp_path_factory) -> dict:
    """A tiny fit whose learning rate explodes after the first epoch (x 1e32 per epoch)."""
    work = tmp_path_factory.mktemp("diverged")
    proc = _fit(
        omniglot_root,
        work,
        "--trainer.max_epochs",
        "4",
        "--model.init_args.lr_scheduler",
        "torch.optim.lr_scheduler.StepLR",
        "--model.init_args.lr_scheduler.init_args.step_size",
        "1",
        "--model.init_args.lr_scheduler.init_args.gamma",
        "1e32",
    )
    return {"work": work, "proc": proc}


def test_diverging_run_stops_at_its_first_nonfinite_loss(diverged):
    """The run stops in the second epoch, naming the step and the last checkpoint written before (still
    finite), instead of finishing its epochs."""
    line = _error_line(diverged["proc"])
    assert "training loss is nan at step" in line and "(epoch 1, batch" in line, line
    ckpt = Path(line.split("last good checkpoint: ")[1].split()[0])
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def _record_ends(data: bytes) -> list[int]:
    """Byte offsets where the records of the first block of a ``.wandb`` file end (7-byte file header,
    then ``crc (4) | length (2) | type (1) | payload`` records)."""
    pos, ends = 7, []
    while pos + 7 <= min(len(data), 32768):
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        if data[pos + 6] == 0:
            break
        pos += 7 + length
        ends.append(pos)
    return ends


def test_truncated_wandb_run_file_is_one_line(diverged, tmp_path):
    source = next((diverged["work"] / "runs" / "omniglot_koch" / "wandb").glob("offline-run-*/run-*.wandb"))
    data = source.read_bytes()
    ends = _record_ends(data)
    assert len(ends) > 3
    middle_of_a_record = (ends[1] + ends[2]) // 2
    for cut in (5, middle_of_a_record):
        run = tmp_path / f"cut{cut}"
        run.mkdir()
        (run / source.name).write_bytes(data[:cut])
        with pytest.raises(CbirError, match=rf"{source.name}.*truncated"):
            read_offline_run(run)
