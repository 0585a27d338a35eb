"""A lock file that refuses a second writer of an index (a dead writer's stale lock is taken over)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from cbir_lightning.errors import CbirError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def index_lock(index: Path):
    lock = index / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise CbirError(
                    f"another `cbir-lightning index` run (pid {pid}) is writing {index}; wait for it to "
                    f"finish (or delete {lock} if that process is not an index run)"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its writer died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise CbirError(f"cannot take the lock {lock}; delete it if no index run is active")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
