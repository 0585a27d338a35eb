"""``FeatureStore``: what a frozen trunk computed for each image view, on disk, memory-mapped.

A store is one folder ``<root>/<key>/`` per trunk and view recipe (``key`` = :func:`store_key` of the
trunk's weights and the recipe), so several runs and configs that share both share it:

* ``meta.json``: the key, the recipe and the shape and dtype of one entry;
* ``shards/<name>.npy``: ``[rows, *shape]`` arrays, each written once (a temporary file in the same
  folder, locked while written, fsynced, renamed) and never changed, read back memory-mapped; the
  temporary file of a writer that was killed is removed by the next one that opens the store;
* ``index.sqlite``: ``entries(item, shard, row)``, one row per stored view; a shard's rows are inserted in
  one transaction after its file is in place, so a killed build leaves complete entries only and the next
  build computes just the missing ones.

Items are named by content (see :mod:`cbir_lightning.features.views`): a changed photo gets a new name, so
it is computed again and nothing else is. Several processes (DDP ranks, runs side by side) may add to one
store at once: SQLite serialises their transactions and the first entry of an item wins.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from cbir_lightning.atomic import atomic_file
from cbir_lightning.digest import update_with_tensor
from cbir_lightning.errors import CbirError

SHARDS = "shards"
INDEX = "index.sqlite"
META = "meta.json"
FORMAT = 1


def module_digest(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes and bytes of every tensor, in order)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        update_with_tensor(digest, tensor)
    return digest.hexdigest()


def store_key(trunk_digest: str, recipe: dict) -> str:
    """The folder name of the store for a trunk (its :func:`module_digest`) and a view recipe."""
    text = json.dumps({"format": FORMAT, "trunk": trunk_digest, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FeatureStore:
    """Args:
    folder: the store's folder (created if missing).
    recipe: what every entry depends on besides its item (trunk digest, view recipe); written to
        ``meta.json`` and checked when the folder already exists.
    """

    def __init__(self, folder: str | Path, recipe: dict) -> None:
        self.folder = Path(folder)
        self.recipe = recipe
        try:
            (self.folder / SHARDS).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CbirError(
                f"cannot create the feature cache {self.folder} ({err.strerror or err}); set the "
                "FeatureCache callback's root to a folder you can write"
            ) from err
        self._check_meta()
        self._sweep()
        self._maps: dict[str, np.ndarray] = {}

    def _sweep(self) -> None:
        """Remove the temporary shard files of writers that died (killed mid-shard): a live writer holds an
        OS lock on its file, so one that can be locked has no writer."""
        for tmp in (self.folder / SHARDS).glob(".*.tmp"):
            try:
                fd = os.open(tmp, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink(missing_ok=True)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)

    @classmethod
    def open(cls, root: str | Path, trunk_digest: str, recipe: dict) -> FeatureStore:
        """The store of ``(trunk_digest, recipe)`` under the cache ``root``."""
        full = {"trunk": trunk_digest, **recipe}
        return cls(Path(root) / store_key(trunk_digest, recipe), full)

    def _check_meta(self) -> None:
        meta = self.folder / META
        if meta.is_file():
            try:
                stored = json.loads(meta.read_text())
            except (OSError, ValueError) as err:
                raise CbirError(f"feature cache {meta} is unreadable ({err}); delete {self.folder}") from err
            if stored.get("recipe") != json.loads(json.dumps(self.recipe)):
                raise CbirError(
                    f"feature cache {self.folder} was written for another trunk or view recipe; "
                    f"delete it or choose another cache root"
                )
            return
        with atomic_file(meta) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, "recipe": self.recipe}, indent=1, sort_keys=True))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.folder / INDEX, timeout=600)
        db.execute("CREATE TABLE IF NOT EXISTS entries (item TEXT PRIMARY KEY, shard TEXT, row INTEGER)")
        return db

    def locate(self, items: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``item -> (shard, row)`` for the stored items among ``items``."""
        found: dict[str, tuple[str, int]] = {}
        db = self._connect()
        try:
            for start in range(0, len(items), 500):
                chunk = list(items[start : start + 500])
                marks = ",".join("?" * len(chunk))
                query = f"SELECT item, shard, row FROM entries WHERE item IN ({marks})"
                for item, shard, row in db.execute(query, chunk):
                    found[item] = (shard, int(row))
        finally:
            db.close()
        return found

    def missing(self, items: Sequence[str]) -> list[str]:
        """The items of ``items`` not stored yet (in order, each once)."""
        found = self.locate(items)
        return list(dict.fromkeys(item for item in items if item not in found))

    def add(self, items: Sequence[str], values: np.ndarray) -> None:
        """Store ``values[i]`` as ``items[i]``: one new shard file, then its rows in one transaction."""
        if len(items) != len(values):
            raise ValueError(f"{len(items)} items for {len(values)} rows")
        name = uuid.uuid4().hex
        shards = self.folder / SHARDS
        fd, tmp = tempfile.mkstemp(dir=shards, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # held while written: see _sweep
                np.save(f, np.ascontiguousarray(values))
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, shards / f"{name}.npy")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        db = self._connect()
        try:
            with db:
                db.executemany(
                    "INSERT OR IGNORE INTO entries (item, shard, row) VALUES (?, ?, ?)",
                    [(item, name, row) for row, item in enumerate(items)],
                )
        finally:
            db.close()

    def shard(self, name: str) -> np.ndarray:
        """Shard ``name`` memory-mapped (opened once per process)."""
        if name not in self._maps:
            self._maps[name] = np.load(self.folder / SHARDS / f"{name}.npy", mmap_mode="r")
        return self._maps[name]

    def __getstate__(self) -> dict:  # DataLoader workers open their own memory maps
        return {**self.__dict__, "_maps": {}}

    def size_bytes(self) -> int:
        """Bytes of the shard files."""
        return sum(p.stat().st_size for p in (self.folder / SHARDS).glob("*.npy"))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r})"
