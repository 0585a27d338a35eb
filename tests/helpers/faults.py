"""Real faults for the integration tests: a small tmpfs to fill (a full disk), and ``FillDisk``, a callback
a ``fit`` subprocess loads as ``helpers.faults.FillDisk`` (tests/ is on its PYTHONPATH)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytorch_lightning as pl


@contextmanager
def small_tmpfs(folder: Path, size: str = "8m"):
    """A tmpfs of ``size`` mounted on ``folder`` for the ``with`` body (a real file system that fills up:
    writes get ENOSPC); the test is skipped, saying why, where this process cannot mount one (not root,
    no ``mount``, a container without the capability)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no `mount` command: cannot make a small tmpfs to fill")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` with the file ``folder/filler`` until ``leave`` bytes are free."""
    with open(folder / "filler", "ab") as f:
        while True:
            stats = os.statvfs(folder)
            free = stats.f_bavail * stats.f_frsize - leave
            if free <= 0:
                return
            try:
                f.write(b"\0" * min(free, 1 << 20))
                f.flush()
            except OSError:  # full
                return


class FillDisk(pl.Callback):
    """At the end of training epoch ``$CBIR_TEST_FILL_EPOCH`` (before the checkpoints of that epoch are
    written), fill the file system of ``$CBIR_TEST_FILL_DIR`` leaving ``$CBIR_TEST_FILL_LEAVE`` bytes."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if str(trainer.current_epoch) == os.environ.get("CBIR_TEST_FILL_EPOCH"):
            fill(Path(os.environ["CBIR_TEST_FILL_DIR"]), int(os.environ.get("CBIR_TEST_FILL_LEAVE", "0")))
