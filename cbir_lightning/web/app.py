"""FastAPI app over one or more indexes. Only indexed files are served, by (index, item id), never by path.

Guarantees:

- Uploads are limited in bytes (a declared Content-Length at once, a chunked body while it streams) and in
  pixels (read from the header before anything is decoded), and only JPEG/PNG/WebP decoders ever run.
- Decoding, embedding and searching run in worker threads behind a :class:`Gate` (``max_concurrent`` at
  once, ``max_waiting`` more queue, the rest get 503), so a slow search never stalls the event loop.
- An item's image is served only if it is the file that was indexed: a regular file inside the indexed
  folder, opened without following a symlink out of it (even one swapped in while serving), with the
  size and modification time recorded at index time; otherwise 404.
- Error responses never contain server paths: the client gets a generic message with an error id, the
  details go to the ``cbir_lightning.web`` log.
- Requests whose Host header is not allowed get 400 (DNS rebinding); with a ``token``, ``/api`` needs it.
- A new index version (``cbir-lightning index`` run again) is picked up without a restart: the live
  version is checked at most once per ``reload_s`` seconds per index; the model is reloaded only if the
  index's model changed.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cbir_lightning.errors import CbirError
from cbir_lightning.rerank.rerank import RERANKERS
from cbir_lightning.search.files import parse_crop
from cbir_lightning.search.manifest import current_version
from cbir_lightning.search.milvus_store import open_index
from cbir_lightning.search.query import (
    TEXT_WEIGHT,
    SearchIndex,
    embed_query,
    hybrid_search,
    search_image,
    searches_by_engine,
)
from cbir_lightning.search.store import is_store_address
from cbir_lightning.web.access import LOOPBACK_HOSTS, TokenMiddleware
from cbir_lightning.web.gate import Gate
from cbir_lightning.web.uploads import DEFAULT_MAX_UPLOAD_PIXELS, UploadRefused, decode_upload

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("cbir_lightning.web")


def model_key(index: SearchIndex) -> tuple:
    """What identifies an index's model: the checkpoint's identity and path, and the whitening."""
    model = index.manifest.get("model") or {}
    whitening = index.manifest.get("whitening") or {}
    return model.get("identity"), model.get("checkpoint"), whitening.get("sha256")


class Catalogue:
    """The served indexes, each reopened when its live version changes, and their models (loaded on
    first use, reloaded only when the index's model changes)."""

    def __init__(self, paths: list[Path | str], reload_s: float = 1.0) -> None:
        self.paths = [p if is_store_address(p) else Path(p) for p in paths]
        self.indexes = [open_index(p) for p in self.paths]
        self.checked = [time.monotonic()] * len(self.paths)
        self.reload_s = reload_s
        self.models: dict[int, tuple[tuple, object]] = {}
        self.index_lock = threading.Lock()
        self.model_lock = threading.Lock()

    def index(self, i: int) -> SearchIndex:
        """Index ``i`` at its live version (checked at most once per ``reload_s``); 404 if none."""
        if not 0 <= i < len(self.indexes):
            raise HTTPException(404, f"no index {i}")
        if time.monotonic() - self.checked[i] >= self.reload_s and isinstance(self.indexes[i], SearchIndex):
            self.refresh(i)  # a database store has no versions: its rows change in place
        return self.indexes[i]

    def refresh(self, i: int) -> None:
        """Reopen index ``i`` if ``CURRENT`` names another version; keep the old one if that fails."""
        with self.index_lock:
            if time.monotonic() - self.checked[i] < self.reload_s:
                return  # another thread just checked
            self.checked[i] = time.monotonic()
            try:
                live = current_version(self.paths[i])
                if live is None or live.name == self.indexes[i].version.name:
                    return
                self.indexes[i] = SearchIndex.open(self.paths[i])
                log.info("index %s: now serving version %s", self.paths[i], self.indexes[i].version.name)
            except Exception as err:  # a half-removed or broken index: keep serving the opened version
                log.warning("index %s: keeping version %s (%s)", self.paths[i], self.indexes[i].version, err)

    def model(self, i: int, index: SearchIndex):
        """The model of ``index`` (index ``i``), reused while its model key stays the same."""
        key = model_key(index)
        with self.model_lock:
            cached = self.models.get(i)
            if cached is None or cached[0] != key:
                self.models[i] = (key, index.load_model())
            return self.models[i][1]


def _chunks(f: BinaryIO, size: int = 1 << 16) -> Iterator[bytes]:
    """The bytes of the open file ``f`` in chunks; closes it at the end (or when the client leaves)."""
    with f:
        while chunk := f.read(size):
            yield chunk


def error_response(err: BaseException) -> JSONResponse:
    """500 with a generic message and an error id; the details (which may name paths) go to the log."""
    error_id = secrets.token_hex(4)
    log.error("error %s: %s: %s", error_id, type(err).__name__, err, exc_info=err)
    return JSONResponse(
        {
            "detail": f"the server could not answer this request (error {error_id}); its log has the details",
            "error_id": error_id,
        },
        500,
    )


def check_crop(crop: str) -> tuple[int, int, int, int] | None:
    """The crop box ``x0,y0,x1,y1`` or None; 422 unless four finite numbers (``inf`` and ``nan`` too)."""
    try:
        return parse_crop(crop or None)
    except CbirError:
        raise HTTPException(422, "crop must be x0,y0,x1,y1 in pixels with x0 < x1 and y0 < y1") from None


def rerankers(index) -> list[str]:
    return (
        list(RERANKERS) if isinstance(index, SearchIndex) and index.manifest["scoring"] == "dot" else ["none"]
    )


def check_rerank(index, rerank: str) -> str:
    allowed = rerankers(index)
    if rerank not in allowed:
        raise HTTPException(422, f"rerank must be one of {', '.join(allowed)} for this index")
    return rerank


def run_search(
    catalogue: Catalogue,
    i: int,
    index,
    query,
    box,
    top_k: int,
    rerank: str,
    max_pixels: int,
    where: str = "",
    text: str = "",
    text_weight: float = TEXT_WEIGHT,
) -> list[dict]:
    """Decode the query (an upload's or an indexed item's bytes, capped at ``max_pixels``), embed it and
    search (a worker thread); with a filter or a text (a database store), the engine's filtered, text or
    hybrid search. A bad filter is 422 with its one-line message."""
    if query is None:
        return _store_search(index, None, text, top_k, where, text_weight)
    model = catalogue.model(i, index)
    try:
        image = decode_upload(query, max_pixels, None if box else getattr(model, "decode_size", None))
    except UploadRefused as err:
        raise HTTPException(err.status, err.message) from err
    if box and (box[2] > image.width or box[3] > image.height):
        size = f"{image.width}x{image.height}"
        raise HTTPException(422, f"crop {list(box)} lies outside the {size} query image")
    if searches_by_engine(index, where, text):
        return _store_search(index, embed_query(model, image, box), text, top_k, where, text_weight)
    return search_image(index, model, image, top_k, box, rerank)


def _store_search(index, vector, text: str, top_k: int, where: str, text_weight: float) -> list[dict]:
    try:
        return hybrid_search(index, vector, text or None, top_k, where or None, text_weight)
    except CbirError as err:  # the filter's or text's own message: no server path in it
        raise HTTPException(422, str(err)) from None


def add_access_middleware(app: FastAPI, hosts: list[str] | None, token: str | None) -> None:
    """Token check inside, Host check outside (middleware added later wraps the earlier ones)."""
    if token:
        app.add_middleware(TokenMiddleware, token=token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts or LOOPBACK_HOSTS), www_redirect=False)


def create_app(
    index_paths: list[Path],
    max_upload_bytes: int = 10 * 1024 * 1024,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    max_concurrent: int = 2,
    max_waiting: int = 16,
    allowed_hosts: list[str] | None = None,
    token: str | None = None,
    reload_s: float = 1.0,
) -> FastAPI:
    """The app; ``allowed_hosts`` defaults to the loopback names, ``token`` None means no token needed."""
    catalogue = Catalogue(index_paths, reload_s)
    gate = Gate(max_concurrent, max_waiting)
    app = FastAPI(title="cbir-lightning search", docs_url=None, redoc_url=None, openapi_url=None)

    # A body without Content-Length (chunked) is counted while it streams and refused past the limit
    # (Starlette's middleware, inner); a declared oversize length is refused at once, with the limit in
    # the message, by the outer middleware below.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=max_upload_bytes + 64 * 1024)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes + 64 * 1024:
            return JSONResponse(
                {"detail": f"upload too large: {length} bytes, the limit is {max_upload_bytes} bytes"}, 413
            )
        return await call_next(request)

    add_access_middleware(app, allowed_hosts, token)

    def describe(i: int, index) -> dict:
        store = not isinstance(index, SearchIndex)
        return {
            "id": i,
            "name": index.address.collection if store else index.path.name,
            "count": len(index),
            "checkpoint": Path(index.manifest["model"]["checkpoint"]).name,
            "rerankers": rerankers(index),
            "columns": index.manifest.get("columns") or {},
            "text": bool(index.manifest.get("text_columns")),
            "max_upload_bytes": max_upload_bytes,
            "max_upload_pixels": max_upload_pixels,
        }

    @app.get("/api/indexes")
    def indexes() -> list[dict]:
        return [describe(i, catalogue.index(i)) for i in range(len(catalogue.indexes))]

    @app.get("/api/indexes/{i}/items")
    def items(i: int, offset: int = 0, limit: int = 60) -> list[dict]:
        index = catalogue.index(i)
        if not isinstance(index, SearchIndex):
            paths = index.page(max(0, offset), max(0, min(limit, 500)))
            return [{"id": p, "name": Path(p).name} for p in paths]
        stop = min(len(index.items), offset + max(0, min(limit, 500)))
        return [{"id": j, "name": Path(index.items[j]["path"]).name} for j in range(max(0, offset), stop)]

    def item_file(index, i: int, j: int | str) -> BinaryIO:
        """The open file of item ``j`` (``open_item``: the indexed file, inside the indexed folder; a row
        number of an index folder, a relative path in a store); 404 (no path in the message) if there is
        none, it left the disk or it changed."""
        if isinstance(index, SearchIndex):
            j = int(j) if str(j).isdigit() else -1
            if not 0 <= j < len(index.items):
                raise HTTPException(404, f"no item {j} in index {i}")
        try:
            return index.open_item(j)
        except CbirError as err:
            log.warning("index %s: item %s not served: %s", index.path, j, err)
            raise HTTPException(404, f"item {j} is no longer the indexed file on disk; re-index") from None

    def item_bytes(index, i: int, j: int | str) -> bytes:
        with item_file(index, i, j) as f:
            return f.read()

    @app.get("/api/indexes/{i}/images/{j:path}")
    def image(i: int, j: str) -> StreamingResponse:
        index = catalogue.index(i)
        f = item_file(index, i, j)
        name = index.items[int(j)]["path"] if isinstance(index, SearchIndex) else j
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        length = str(os.fstat(f.fileno()).st_size)
        return StreamingResponse(_chunks(f), media_type=kind, headers={"Content-Length": length})

    @app.post("/api/search")
    async def search(
        index: Annotated[int, Form()] = 0,
        top_k: Annotated[int, Form()] = 10,
        crop: Annotated[str, Form()] = "",
        rerank: Annotated[str, Form()] = "none",
        item: Annotated[str | None, Form()] = None,
        file: Annotated[UploadFile | None, File()] = None,
        where: Annotated[str, Form()] = "",
        text: Annotated[str, Form()] = "",
        text_weight: Annotated[float, Form()] = TEXT_WEIGHT,
    ) -> dict:
        chosen = await run_in_threadpool(catalogue.index, index)
        box, rerank = check_crop(crop), check_rerank(chosen, rerank)
        upload = file is not None and bool(file.filename)
        if not upload and item is None and not text.strip():
            raise HTTPException(422, "upload an image, pick one from the collection or type a text")
        if isinstance(chosen, SearchIndex) and item is not None and not item.isdigit():
            raise HTTPException(422, "item must be a row number of this index")
        async with gate.slot():  # the upload is read into memory only inside the gate
            if not upload and item is None:
                query = None
            elif upload:
                query = await file.read(max_upload_bytes + 1)
                if len(query) > max_upload_bytes:
                    raise HTTPException(
                        413, f"upload too large: {len(query)} bytes, the limit is {max_upload_bytes} bytes"
                    )
            else:
                query = await run_in_threadpool(item_bytes, chosen, index, item)
            args = (catalogue, index, chosen, query, box, max(1, min(top_k, 100)), rerank, max_upload_pixels)
            results = await run_in_threadpool(run_search, *args, where.strip(), text.strip(), text_weight)
        return {
            "results": [
                {
                    "id": r["id"],
                    "name": Path(r["path"]).name,
                    "score": r["score"],
                    "url": f"/api/indexes/{index}/images/{quote(str(r['id']))}",
                    **({"metadata": r["metadata"]} if "metadata" in r else {}),
                }
                for r in results
            ]
        }

    @app.exception_handler(CbirError)
    async def cbir_error(request: Request, err: CbirError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, err: Exception) -> JSONResponse:
        return error_response(err)

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app
