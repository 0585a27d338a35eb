"""``MilvusStore``: an index kept in a Milvus collection (``--store milvus:PATH.db`` or ``milvus://HOST:PORT``).

One row per image, keyed by its path relative to the indexed folder: the vector (a ``FLAT`` inner-product
index: exact search, the same top-k as the folder format's faiss), ``size``/``mtime_ns``/``sha256`` (what
``index`` compares to re-embed only changed files, and ``recommend``'s duplicate test), the metadata
columns (``index --metadata``; nullable), and ``text``: the chosen text columns joined, with Milvus's own
BM25 full-text index over it (``sparse``). The build's manifest (model, whitening, columns, ...) is the
collection property ``cbir_lightning.manifest``; a collection without it was not written by this toolkit
and is never written to or dropped.

Filters (``search --where``) are Milvus boolean expressions, evaluated by the engine during the search
(``style == 'Rococo' and year < 1800``, ``artist in ['canaletto', 'guardi']``, ``title like 'Venice%'``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import BinaryIO

import numpy as np
from torch import Tensor

from cbir_lightning.errors import CbirError
from cbir_lightning.search.files import open_indexed
from cbir_lightning.search.query import SearchIndex, check_index_model, load_index_model
from cbir_lightning.search.store import StoreAddress, is_store_address, parse_store

MANIFEST_PROPERTY = "cbir_lightning.manifest"
MAGIC = "cbir-lightning index"
FORMAT_VERSION = 1
PATH_MAX = 4096
TEXT_MAX = 65535
OWN_FIELDS = ["path", "size", "mtime_ns", "sha256"]
INSTALL = "pip install 'cbir-lightning[store]'"


def milvus_module():
    """pymilvus, or CbirError naming the extra to install."""
    try:
        import pymilvus  # optional: the database backend (the `store` extra)
    except ImportError as err:
        raise CbirError(f"--store milvus needs pymilvus and milvus-lite; {INSTALL}") from err
    for name in ("pymilvus", "milvus_lite"):  # their errors become one CbirError line
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def short(err: BaseException) -> str:
    """The first line of a Milvus error's message."""
    message = getattr(err, "message", None) or str(err)
    return " ".join(str(message).split("\n", 1)[0].split())[:300]


def paths_filter(paths: list[str]) -> str:
    """The filter expression matching exactly ``paths``: each a double-quoted literal with ``"`` and ``\\``
    escaped (pymilvus's ``get``/``delete`` by id quote without escaping: a file named ``x' or 1==1 or
    path in ['`` would match every row)."""
    return "path in [" + ", ".join(json.dumps(p, ensure_ascii=False) for p in paths) + "]"


def is_lite_database(path: Path) -> bool:
    """Whether ``path`` is a Milvus Lite database (the folder it writes: ``collections/``, ``databases/``)."""
    return path.is_dir() and not path.is_symlink() and (path / "collections").is_dir()


def connect(address: StoreAddress, create: bool = False):
    """A ``MilvusClient`` of ``address``. A local database must exist (``create``: or its folder must, and
    then only ``PATH.db`` is created) and be a Milvus Lite database; CbirError (one line) otherwise."""
    pymilvus = milvus_module()
    path = address.db_path
    if path is not None:
        if path.exists() and not is_lite_database(path):
            raise CbirError(
                f"--store {address}: {path} exists and is not a Milvus Lite database; pass a new PATH.db"
            )
        if not path.exists() and not create:
            raise CbirError(
                f"store {address} not found; build it with "
                f"`cbir-lightning index --images DIR --store {address}`"
            )
        if not path.parent.is_dir():
            raise CbirError(f"--store {address}: folder {path.parent} does not exist; create it first")
    try:
        return pymilvus.MilvusClient(address.uri)
    except Exception as err:  # server down, a held lock: pymilvus raises various types
        held = "; Milvus Lite serves one process at a time: is another index, search or serve using it?"
        raise CbirError(f"cannot open store {address} ({short(err)}{held if path else ''})") from err


def read_manifest_property(client, address: StoreAddress) -> dict | None:
    """The collection's manifest, None if the collection does not exist; CbirError if it exists but was not
    written by this toolkit (no manifest property) or by a newer format."""
    if not client.has_collection(address.collection):
        return None
    properties = client.describe_collection(address.collection).get("properties") or {}
    try:
        manifest = json.loads(properties[MANIFEST_PROPERTY])
    except (KeyError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("magic") != MAGIC:
        raise CbirError(
            f"collection {address.collection!r} of {address} was not written by `cbir-lightning index`; "
            "pass another collection (--store ...#NAME)"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CbirError(
            f"store {address} has format version {manifest.get('format_version')}, this cbir-lightning reads "
            f"{FORMAT_VERSION}; re-index it"
        )
    return manifest


class MilvusStore:
    """A Milvus collection written by ``cbir-lightning index --store``: the :class:`VectorStore` contract
    (see :mod:`cbir_lightning.search.store`)."""

    def __init__(self, address: StoreAddress, client, manifest: dict) -> None:
        self.address, self.client, self.manifest = address, client, manifest
        self.path = str(address)

    @classmethod
    def open(cls, spec: str | StoreAddress) -> MilvusStore:
        address = spec if isinstance(spec, StoreAddress) else parse_store(spec)
        client = connect(address)
        manifest = read_manifest_property(client, address)
        if manifest is None:
            raise CbirError(
                f"store {address} has no collection {address.collection!r}; build it with "
                f"`cbir-lightning index --images DIR --store {address}`"
            )
        try:
            client.load_collection(address.collection)
        except Exception as err:
            raise CbirError(
                f"cannot load collection {address.collection!r} of {address} ({short(err)})"
            ) from err
        return cls(address, client, manifest)

    def close(self) -> None:
        self.client.close()

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def columns(self) -> dict[str, str]:
        """The metadata columns and their kinds (``int``, ``float``, ``str``)."""
        return self.manifest.get("columns") or {}

    def load_model(self, ckpt=None, onnx_model=None):
        return load_index_model(self.manifest, self.path, ckpt, onnx_model)

    def check_model(self, model):
        return check_index_model(self.manifest, self.path, model)

    def _search(self, data: list, field: str, metric: str, top_k: int, where: str | None, flag: str):
        try:
            found = self.client.search(
                self.address.collection,
                data=data,
                anns_field=field,
                limit=max(1, min(int(top_k), 16384)),
                filter=where or "",
                output_fields=[*OWN_FIELDS, *self.columns],
                search_params={"metric_type": metric},
            )
        except Exception as err:
            if where:
                raise CbirError(
                    f"--where {where!r}: {short(err)} (columns: {', '.join(self.columns) or 'none'})"
                ) from err
            raise CbirError(f"{flag} on store {self.path} failed ({short(err)})") from err
        # BM25 scores are >= 0; Milvus Lite reports them negated (still best first), a server as they are
        scores = [abs(h["distance"]) if metric == "BM25" else h["distance"] for h in found[0]]
        return [self.result(hit["entity"], s) for hit, s in zip(found[0], scores, strict=True)]

    def vector_search(self, query: Tensor, top_k: int, where: str | None = None) -> list[dict]:
        """The ``top_k`` rows nearest to one query vector ``[1, D]`` by inner product (exact: ``FLAT``),
        among those satisfying ``where`` (the engine filters while it searches)."""
        vector = np.asarray(query, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.manifest["dimension"]:
            raise CbirError(
                f"query vector of length {vector.shape[0]} does not match store dimension "
                f"{self.manifest['dimension']}"
            )
        return self._search([vector.tolist()], "vector", "IP", top_k, where, "search")

    def text_search(self, text: str, top_k: int, where: str | None = None) -> list[dict]:
        """The ``top_k`` rows best matching ``text`` by BM25 over the text columns (Milvus full-text
        search), among those satisfying ``where``."""
        if not self.manifest.get("text_columns"):
            raise CbirError(
                f"--text needs text columns: store {self.path} was indexed without --metadata (or with no "
                "text column); re-index with --metadata FILE.tsv"
            )
        return self._search([text], "sparse", "BM25", top_k, where, "--text")

    def result(self, entity: dict, score: float) -> dict:
        return {
            "id": entity["path"],
            "path": str(Path(self.manifest["images_root"]) / entity["path"]),
            "score": round(float(score), 6),
            "sha256": entity.get("sha256"),
            "metadata": {name: entity.get(name) for name in self.columns},
        }

    def rows(self, paths: list[str], fields: list[str] | None = None) -> list[dict]:
        """The stored rows of ``paths`` (relative), with ``fields`` (default: all but the vectors)."""
        if not paths:
            return []
        try:
            return self.client.query(
                self.address.collection,
                filter=paths_filter(list(paths)),
                output_fields=fields or [*OWN_FIELDS, *self.columns],
            )
        except Exception as err:  # e.g. a path the engine cannot quote: the item is not there
            raise CbirError(f"cannot read {len(paths)} item(s) of store {self.path} ({short(err)})") from err

    def page(self, offset: int, limit: int) -> list[str]:
        """``limit`` stored paths from the ``offset``-th, in the engine's order (the web page's picker)."""
        found = self.client.query(
            self.address.collection, filter="", output_fields=["path"], offset=offset, limit=limit
        )
        return [row["path"] for row in found]

    def open_item(self, item: str) -> BinaryIO:
        """The file of the row ``item`` (its relative path) if it is still the indexed file: inside the
        indexed folder (no symlink out of it followed), with the recorded size and mtime; CbirError else."""
        found = [row for row in self.rows([item]) if row["path"] == item]  # exactly this row, nothing else
        if not found:
            raise CbirError(f"{item} is not in store {self.path}")
        return open_indexed(self.manifest["images_root"], found[0])


def open_index(path: str | Path) -> SearchIndex | MilvusStore:
    """An index folder (:class:`~cbir_lightning.search.query.SearchIndex`) or, for a ``--store`` address
    (``milvus:...``), a :class:`MilvusStore`."""
    return MilvusStore.open(path) if is_store_address(path) else SearchIndex.open(path)
