"""An index folder: ``CURRENT`` names the live version folder, which holds ``manifest.json``,
``embeddings.npy`` (row i = item i) and ``faiss.index`` (inner product over those rows).

A new version is written in full beside the live one, then ``CURRENT`` is replaced atomically, so a
reader (or a killed writer) always sees one complete version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cbir_lightning.errors import CbirError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
FAISS_INDEX = "faiss.index"
CURRENT = "CURRENT"


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_version(index: Path) -> Path | None:
    """The live version folder of an index, or None if it has none yet."""
    pointer = index / CURRENT
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not name or "/" in name or name.startswith("."):
        raise CbirError(f"index {index}: {pointer} is corrupt; rebuild it with `cbir-lightning index`")
    return index / name


def read_manifest(index: str | Path) -> tuple[dict, Path]:
    """The manifest and version folder of an index; CbirError with the fix if it is missing or foreign."""
    index = Path(index)
    if not index.is_dir():
        raise CbirError(
            f"index {index} not found; build it with `cbir-lightning index --ckpt CKPT --images DIR "
            f"--out {index}`"
        )
    version = current_version(index)
    if version is None or not (version / MANIFEST).is_file():
        raise CbirError(f"{index} holds no index; build it with `cbir-lightning index ... --out {index}`")
    try:
        manifest = json.loads((version / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CbirError(
            f"index {index}: unreadable manifest {version / MANIFEST} ({err}); rebuild the index"
        ) from err
    found = manifest.get("format_version") if isinstance(manifest, dict) else None
    if found != FORMAT_VERSION:
        raise CbirError(
            f"index {index} has format version {found}, this cbir-lightning reads version {FORMAT_VERSION}; "
            "rebuild it with `cbir-lightning index`"
        )
    return manifest, version


def publish(index: Path, version: Path) -> None:
    """Make ``version`` (a complete folder inside ``index``) the live one, atomically."""
    write_text_atomic(index / CURRENT, version.name + "\n")
