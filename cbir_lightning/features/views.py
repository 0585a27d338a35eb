"""Naming image views by content, and reading a store's views back.

An item of a :class:`~cbir_lightning.contracts.ViewSource` is named by the sha256 of what its views are made
of (its photo file and, say, the annotation it is cropped to; or its pixels), so a store entry follows the
content, not the path: a renamed photo is found again, a changed one is computed again. View ``k`` of an
item is ``<identity>/<k>``: view 0 is the evaluation view, views ``1..K`` are augmented views drawn from a
generator seeded by ``(identity, k)`` alone, so the same photo gets the same views in every run and config.

:class:`FileDigests` keeps each file's digest with its size and mtime (``files.sqlite`` in the cache root),
so an unchanged file is hashed once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cbir_lightning.contracts import ViewSource
from cbir_lightning.errors import CbirError
from cbir_lightning.features.store import FeatureStore

DIGESTS = "files.sqlite"


class FileDigests:
    """sha256 of files, remembered with ``(size, mtime_ns)`` in ``<root>/files.sqlite``."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / DIGESTS
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def digests(self, files: Sequence[Path]) -> list[str]:
        """The sha256 of each file (hashed again only when its size or mtime changed)."""
        db = sqlite3.connect(self.path, timeout=600)
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime INTEGER, "
                "sha256 TEXT)"
            )
            known = {p: (s, m, h) for p, s, m, h in db.execute("SELECT path, size, mtime, sha256 FROM files")}
            out, fresh = [], []
            for file in files:
                key = str(Path(file).resolve())
                try:
                    stat = Path(file).stat()
                except OSError as err:
                    raise CbirError(f"image {file} cannot be read ({err.strerror or err})") from err
                size, mtime = stat.st_size, stat.st_mtime_ns
                entry = known.get(key)
                if entry is None or entry[:2] != (size, mtime):
                    entry = (size, mtime, _sha256_file(Path(file)))
                    known[key] = entry
                    fresh.append((key, *entry))
                out.append(entry[2])
            with db:
                db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", fresh)
        finally:
            db.close()
        return out


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identities(source: ViewSource, digests: FileDigests) -> list[str]:
    """The content name of every item of ``source``: sha256 over the digests of its sources, in order
    (a file by :class:`FileDigests`, bytes directly)."""
    parts = [source.sources(i) for i in range(len(source))]
    files = [p for item in parts for p in item if isinstance(p, Path)]
    file_digest = dict(zip(files, digests.digests(files), strict=True))
    names = []
    for item in parts:
        digest = hashlib.sha256()
        for part in item:
            digest.update(
                (file_digest[part] if isinstance(part, Path) else hashlib.sha256(part).hexdigest()).encode()
            )
        names.append(digest.hexdigest())
    return names


def view_name(identity: str, k: int) -> str:
    return f"{identity}/{k}"


def view_generator(identity: str, k: int) -> torch.Generator:
    """The generator of augmented view ``k`` of an item: a pure function of ``(identity, k)``."""
    state = np.random.SeedSequence([int(identity[:16], 16), int(k)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class ViewImages(Dataset):
    """Image tensors of ``(item, view)`` pairs of a source: view 0 the evaluation view, others augmented."""

    def __init__(self, source: ViewSource, names: Sequence[str], pairs: Sequence[tuple[int, int]]) -> None:
        self.source, self.names, self.pairs = source, list(names), list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, j: int) -> torch.Tensor:
        i, k = self.pairs[j]
        return self.source.view(i, view_generator(self.names[i], k) if k else None)


class CachedViews:
    """The stored views ``0..views`` of every item of a source: ``features(i, k)`` is a float32 tensor.

    Args:
        store: the store holding them (every view must be stored: see ``fill_store``).
        names: the items' content names (:func:`identities`).
        views: augmented views per item (view 0, the evaluation view, always included).
    """

    def __init__(self, store: FeatureStore, names: Sequence[str], views: int) -> None:
        self.store, self.views = store, int(views)
        wanted = [view_name(name, k) for name in names for k in range(self.views + 1)]
        found = store.locate(wanted)
        absent = [w for w in wanted if w not in found]
        if absent:
            raise CbirError(f"feature cache {store.folder} lacks {len(absent)} views; build it again")
        shards = sorted({shard for shard, _ in found.values()})
        self.shards = shards
        number = {name: i for i, name in enumerate(shards)}
        self.locations = torch.tensor(
            [[number[found[w][0]], found[w][1]] for w in wanted], dtype=torch.long
        ).view(len(names), self.views + 1, 2)

    def __len__(self) -> int:
        return len(self.locations)

    def features(self, i: int, k: int = 0) -> torch.Tensor:
        shard, row = self.locations[i, k].tolist()
        return torch.from_numpy(np.array(self.store.shard(self.shards[shard])[row], dtype=np.float32))
