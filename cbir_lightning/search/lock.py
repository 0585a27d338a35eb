"""The writer lock of an index folder: an OS lock (``flock``) on the file ``.lock``, never unlinked.

The kernel holds the lock for the open file and drops it when the holder exits, however it dies, so a
dead writer never blocks the next run and two runs can never both hold it. The holder's host, pid and
start time are written into the file after the lock is taken, only to name it in the refusal.

The one exception to "never unlinked": a run that created the index folder and fails removes the folder
again, lock file included, while it holds the lock. A run that took the lock of a file removed meanwhile
sees that the path no longer names the file it locked and takes the lock of the current file instead.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from cbir_lightning.errors import CbirError
from cbir_lightning.search.manifest import LOCK

HOLDER = re.compile(r"pid \d+ on host \S*, started [0-9TZ:-]+\n")  # what a holder writes in the file


def _holder(fd: int) -> str:
    """Who holds the lock, as written by the holder ("pid N on host H, started T"), or a placeholder."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return " ".join(text.split())[:300] or "whose pid is not written yet"


def _write_holder(fd: int) -> None:
    """Name this process in the lock file (on a full disk it stays unnamed: the lock holds all the same)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n".encode(), 0)
    except OSError:
        pass


def _open(lock: Path) -> int:
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise CbirError(
            f"cannot open the lock file {lock} ({err.strerror or err}); pass an --out folder you can write"
        ) from err


def _is_current(fd: int, lock: Path) -> bool:
    """Whether ``lock`` still names the file open as ``fd`` (a failed first run may have removed it)."""
    try:
        here, there = os.fstat(fd), os.stat(lock, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _locked(index: Path, attempts: int = 3) -> int:
    """An open descriptor of ``index/.lock`` holding its lock; CbirError naming the holder if another
    process holds it."""
    lock = index / LOCK
    for _ in range(attempts):
        fd = _open(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise CbirError(
                f"another `cbir-lightning index` run ({holder}) is writing {index}; wait for it to finish"
            ) from None
        if _is_current(fd, lock):
            return fd
        os.close(fd)
    raise CbirError(f"the lock file {lock} keeps being removed; is another program clearing {index}?")


@contextmanager
def index_lock(index: Path):
    """Hold the writer lock of the index folder ``index`` for the ``with`` body; CbirError (one line naming
    the holder and the folder) at once if another process holds it."""
    fd = _locked(Path(index))
    try:
        _write_holder(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # still locked: nobody reads a finished run as the holder
    finally:
        os.close(fd)  # releases the lock
