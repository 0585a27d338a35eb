"""An index folder: ``CURRENT`` names the live version folder, which holds ``manifest.json``,
``embeddings.npy`` (row i = item i) and ``faiss.index`` (inner product over those rows).

A new version is written in full beside the live one, then ``CURRENT`` is replaced atomically, so a
reader (or a killed writer) always sees one complete version. The version before the live one is kept
(a reader that resolved ``CURRENT`` just before a publish can still read it); older ones are deleted.

An index folder is recognised by its marker ``.cbir-lightning-index`` (a magic line and the format
version; written when the toolkit first writes the folder), or, for indexes written before the marker
existed, by a ``CURRENT`` naming a version folder this toolkit wrote: a folder with any other ``CURRENT``
(a LevelDB folder, say) is not an index and is never written to.

Only folders this toolkit wrote are ever deleted: a version folder is named ``v-YYYYmmddHHMMSS-<8 hex>``
and holds the marker file ``.cbir-lightning-version`` (written first, so a half-written version of a
killed run is recognised too; an empty folder of that name counts too) or, for indexes written before
the marker existed, a manifest with a ``format_version``.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

from cbir_lightning.atomic import atomic_file
from cbir_lightning.errors import CbirError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
FAISS_INDEX = "faiss.index"
CURRENT = "CURRENT"
LOCK = ".lock"
VERSION_MARKER = ".cbir-lightning-version"
VERSION_NAME = re.compile(r"v-\d{14}-[0-9a-f]{8}")
INDEX_MARKER = ".cbir-lightning-index"
INDEX_MAGIC = "cbir-lightning index folder"


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_index_marker(index: Path) -> None:
    """Mark ``index`` as a folder this toolkit writes its index into (atomically)."""
    write_text_atomic(
        index / INDEX_MARKER, json.dumps({"magic": INDEX_MAGIC, "format_version": FORMAT_VERSION})
    )


def index_marker(index: Path) -> dict | None:
    """The toolkit's marker of ``index`` (``{"magic", "format_version"}``), or None if it has none or the
    file is not the toolkit's (wrong magic, not JSON, a symlink)."""
    marker = index / INDEX_MARKER
    try:
        if marker.is_symlink():
            return None
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("magic") == INDEX_MAGIC else None


def is_toolkit_index(index: Path) -> bool:
    """True only for an index folder this toolkit wrote: it holds the marker, or (written before the
    marker existed) a ``CURRENT`` naming a version folder the toolkit wrote, or a non-empty such version
    folder. CbirError (one line) for the marker of a newer format this version cannot write."""
    marker = index_marker(index)
    if marker is not None:
        found = marker.get("format_version")
        if found != FORMAT_VERSION:
            raise CbirError(
                f"index {index} has format version {found}, this cbir-lightning writes version "
                f"{FORMAT_VERSION}; use that cbir-lightning version or pass another --out folder"
            )
        return True
    try:
        name = (index / CURRENT).read_text(errors="replace").strip()
    except OSError:
        name = ""
    if VERSION_NAME.fullmatch(name) and is_toolkit_version(index / name):
        return True
    return any(any(v.iterdir()) for v in toolkit_versions(index))


def current_version(index: Path) -> Path | None:
    """The live version folder of an index, or None if it has none yet; CbirError if ``CURRENT`` is not
    the name of a folder in ``index`` (garbage text)."""
    pointer = index / CURRENT
    try:
        name = pointer.read_bytes().decode("utf-8", "replace").strip()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if not name or "/" in name or name.startswith(".") or not name.isprintable() or "\ufffd" in name:
        raise CbirError(f"index {index}: {pointer} is corrupt; rebuild it with `cbir-lightning index`")
    return index / name


def is_toolkit_version(folder: Path) -> bool:
    """True only for a version folder this toolkit wrote: the exact name pattern and the marker file (or a
    manifest with ``format_version``, as written before the marker existed), or an empty folder of that
    name (a run killed between creating it and writing the marker: deleting it loses nothing). Never
    follows a symlink."""
    if not VERSION_NAME.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / VERSION_MARKER).is_file() or not any(folder.iterdir()):
        return True
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest


def toolkit_versions(index: Path) -> list[Path]:
    """The version folders this toolkit wrote in ``index``, oldest first (by name: the name starts with
    the creation time)."""
    try:
        children = list(index.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((c for c in children if is_toolkit_version(c)), key=lambda c: c.name)


def new_version(index: Path) -> Path:
    """Create an empty version folder in ``index`` whose first file is the marker, and return it."""
    version = index / f"v-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    version.mkdir()
    (version / VERSION_MARKER).write_text(f"written by cbir-lightning index, pid {os.getpid()}\n")
    return version


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
    damaged = _damaged_field(manifest)
    if damaged:
        raise CbirError(
            f"index {index}: its manifest is damaged ({damaged}); rebuild it with `cbir-lightning index`"
        )
    return manifest, version


MANIFEST_FIELDS = {  # what every manifest `index` writes holds, by type
    "images_root": str, "model": dict, "dimension": int, "scoring": str, "count": int, "items": list,
}  # fmt: skip


def _damaged_field(manifest: dict) -> str | None:
    """What in ``manifest`` is not as ``index`` writes it (a field's type, the items' count or form), or
    None: a hand-edited or damaged manifest is one line, not an error deep in a search."""
    for key, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            return f"{key!r} is not a {kind.__name__}"
    if manifest.get("whitening") is not None and not isinstance(manifest["whitening"], dict):
        return "'whitening' is not an object"
    items = manifest["items"]
    if len(items) != manifest["count"]:
        return f"{len(items)} items for a count of {manifest['count']}"
    if not all(isinstance(item, dict) and isinstance(item.get("path"), str) for item in items):
        return "an item without a path"
    return None


def publish(index: Path, version: Path) -> None:
    """Make ``version`` (a complete folder inside ``index``) the live one, atomically."""
    write_text_atomic(index / CURRENT, version.name + "\n")
