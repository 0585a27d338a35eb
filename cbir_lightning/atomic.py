"""Writing a file so that a reader, a crash or a kill never sees it half written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cbir_lightning.errors import CbirError


@contextmanager
def atomic_file(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to. When the block ends without error the file is
    flushed to disk, given ``mode`` and moved over ``path`` in one step (``os.replace``, the folder then
    fsynced); on any error (a kill's KeyboardInterrupt included) it is removed and ``path`` is left as it
    was. Missing parent folders are created; a folder at ``path`` is one CbirError line
    (:func:`file_target`)."""
    path = file_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as written:
            os.fsync(written.fileno())
        tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def file_target(path: str | Path) -> Path:
    """``path`` as a file to write; CbirError (one line) if a folder is there, which a file never replaces."""
    path = Path(path)
    if path.is_dir():
        raise CbirError(f"{path} is a folder; pass the path of a file to write")
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a crash after it keeps the new file); best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
