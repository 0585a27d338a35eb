"""The writer lock of an index folder: an OS lock (``flock``) on the file ``.lock``, never unlinked.

The kernel holds the lock for the open file and drops it when the holder exits, however it dies, so a
dead writer never blocks the next run and two runs can never both hold it. The holder's host, pid and
start time are written into the file after the lock is taken, only to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from cbir_lightning.errors import CbirError
from cbir_lightning.search.manifest import LOCK


def _holder(fd: int) -> str:
    """Who holds the lock, as written by the holder ("pid N on host H, started T"), or a placeholder."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return " ".join(text.split())[:300] or "whose pid is not written yet"


@contextmanager
def index_lock(index: Path):
    """Hold the writer lock of the index folder ``index`` for the ``with`` body; CbirError (one line naming
    the holder and the folder) at once if another process holds it."""
    lock = Path(index) / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CbirError(
            f"cannot open the lock file {lock} ({err.strerror or err}); pass an --out folder you can write"
        ) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise CbirError(
                f"another `cbir-lightning index` run ({holder}) is writing {index}; wait for it to finish"
            ) from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # still locked: nobody reads a finished run as the holder
    finally:
        os.close(fd)  # releases the lock
