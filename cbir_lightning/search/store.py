"""Where an index lives: the ``VectorStore`` contract, and ``--store`` addresses.

Two backends satisfy it: the toolkit's own index folder (:class:`~cbir_lightning.search.query.SearchIndex`,
the default: ``.npy`` vectors + faiss, versioned) and a Milvus collection
(:class:`~cbir_lightning.search.milvus_store.MilvusStore`: Milvus Lite embedded in a local ``.db`` for
tests and one machine, the same client against a Milvus server or cluster).

``--store`` addresses:

- ``milvus:PATH.db`` -- Milvus Lite, a local database at ``PATH.db`` (created by ``index``, only there);
- ``milvus://HOST:PORT`` (``milvus+https://HOST:PORT`` over TLS) -- a Milvus server or cluster;
- either with ``#NAME`` at the end: the collection (default ``images``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor

from cbir_lightning.errors import CbirError

DEFAULT_COLLECTION = "images"
COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
SCHEMES = ("milvus:PATH.db", "milvus://HOST:PORT", "milvus+https://HOST:PORT")


@runtime_checkable
class VectorStore(Protocol):
    """An index that ``search``, ``recommend``, ``serve`` and the Python API query.

    ``manifest``: what built it (``model``, ``whitening``, ``scoring``, ``dimension``, ``images_root``,
    ``columns``: the metadata columns and their kinds). Results are dicts ``{"id", "path", "score",
    "metadata"}``, best first; ``id`` names the item for ``open_item``."""

    manifest: dict

    def __len__(self) -> int: ...

    def check_model(self, model): ...

    def load_model(self, ckpt=None, onnx_model=None): ...

    def vector_search(self, query: Tensor, top_k: int, where: str | None = None) -> list[dict]: ...

    def text_search(self, text: str, top_k: int, where: str | None = None) -> list[dict]: ...


@dataclass(frozen=True)
class StoreAddress:
    """A parsed ``--store``: the Milvus ``uri`` (a local ``.db`` path or ``http(s)://host:port``), whether
    it is local (Milvus Lite) and the collection."""

    uri: str
    local: bool
    collection: str = DEFAULT_COLLECTION

    @property
    def db_path(self) -> Path | None:
        return Path(self.uri) if self.local else None

    def __str__(self) -> str:
        scheme, _, host = self.uri.partition("://")
        server = f"{'milvus+https' if scheme == 'https' else 'milvus'}://{host}"
        where = f"milvus:{self.uri}" if self.local else server
        return where if self.collection == DEFAULT_COLLECTION else f"{where}#{self.collection}"


def is_store_address(text) -> bool:
    """Whether ``text`` names a database store (``milvus...``) rather than an index folder."""
    return isinstance(text, str) and text.split(":", 1)[0] in ("milvus", "milvus+https")


def parse_store(text: str) -> StoreAddress:
    """``--store`` as a :class:`StoreAddress`; CbirError (one line, the accepted forms) otherwise."""
    accepted = ", ".join(SCHEMES)
    base, _, collection = str(text).partition("#")
    collection = collection or DEFAULT_COLLECTION
    if not COLLECTION_NAME.fullmatch(collection):
        raise CbirError(f"--store {text}: collection {collection!r} is not a name (letters, digits, _)")
    scheme, sep, rest = base.partition(":")
    if not sep or scheme not in ("milvus", "milvus+https"):
        raise CbirError(f"--store {text}: unknown store; pass one of {accepted}")
    if rest.startswith("//"):
        host = rest[2:].rstrip("/")
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d+", host):
            raise CbirError(f"--store {text}: expected {scheme}://HOST:PORT (e.g. milvus://localhost:19530)")
        return StoreAddress(f"{'https' if scheme == 'milvus+https' else 'http'}://{host}", False, collection)
    if scheme != "milvus" or not rest.endswith(".db"):
        raise CbirError(
            f"--store {text}: a local Milvus Lite database is milvus:PATH.db; pass one of {accepted}"
        )
    return StoreAddress(rest, True, collection)
