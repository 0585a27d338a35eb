"""FastAPI app over one or more indexes. Only indexed files are served, by (index, item id), never by path.

Uploads are limited in size (a declared Content-Length at once, a chunked body while it streams) and must
decode as JPEG/PNG/WebP with Pillow (the name is ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from cbir_lightning.errors import CbirError
from cbir_lightning.rerank.rerank import RERANKERS
from cbir_lightning.search.files import open_image
from cbir_lightning.search.query import SearchIndex, search_image

STATIC = Path(__file__).parent / "static"
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")


class Catalogue:
    """The served indexes and their models (loaded on first use)."""

    def __init__(self, paths: list[Path]) -> None:
        self.indexes = [SearchIndex.open(p) for p in paths]
        self.models: dict[int, object] = {}

    def index(self, i: int) -> SearchIndex:
        if not 0 <= i < len(self.indexes):
            raise HTTPException(404, f"no index {i}")
        return self.indexes[i]

    def model(self, i: int):
        if i not in self.models:
            self.models[i] = self.index(i).load_model()
        return self.models[i]


def read_upload(data: bytes, limit: int) -> Image.Image:
    if len(data) > limit:
        raise HTTPException(413, f"upload too large: {len(data)} bytes, the limit is {limit} bytes")
    try:
        image = open_image(data, "upload")
    except CbirError as err:
        reason = "too large" if "too large" in str(err) else "Pillow cannot decode it"
        raise HTTPException(415, f"upload refused: not a JPEG, PNG or WebP image ({reason})") from err
    if image.format not in ACCEPTED_FORMATS:
        raise HTTPException(415, f"upload refused: {image.format} is not a JPEG, PNG or WebP image")
    return image


def create_app(index_paths: list[Path], max_upload_bytes: int = 10 * 1024 * 1024) -> FastAPI:
    catalogue = Catalogue(index_paths)
    app = FastAPI(title="cbir-lightning search")

    # A body without Content-Length (chunked) is counted while it streams and refused past the limit
    # (Starlette's middleware, inner); a declared oversize length is refused at once, with the limit in
    # the message, by the outer middleware below (middleware added later wraps the earlier ones).
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=max_upload_bytes + 64 * 1024)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload_bytes + 64 * 1024:
            return JSONResponse(
                {"detail": f"upload too large: {length} bytes, the limit is {max_upload_bytes} bytes"}, 413
            )
        return await call_next(request)

    @app.get("/api/indexes")
    def indexes() -> list[dict]:
        return [
            {
                "id": i,
                "name": index.path.name,
                "count": len(index.items),
                "checkpoint": Path(index.manifest["model"]["checkpoint"]).name,
                "rerankers": list(RERANKERS) if index.manifest["scoring"] == "dot" else ["none"],
                "max_upload_bytes": max_upload_bytes,
            }
            for i, index in enumerate(catalogue.indexes)
        ]

    @app.get("/api/indexes/{i}/items")
    def items(i: int, offset: int = 0, limit: int = 60) -> list[dict]:
        index = catalogue.index(i)
        stop = min(len(index.items), offset + max(0, min(limit, 500)))
        return [{"id": j, "name": Path(index.items[j]["path"]).name} for j in range(max(0, offset), stop)]

    @app.get("/api/indexes/{i}/images/{j}")
    def image(i: int, j: int) -> FileResponse:
        index = catalogue.index(i)
        if not 0 <= j < len(index.items):
            raise HTTPException(404, f"no item {j} in index {i}")
        path = index.item_path(j)
        if not path.is_file():
            raise HTTPException(404, f"item {j} is no longer on disk; re-index")
        return FileResponse(path)

    @app.post("/api/search")
    async def search(
        index: Annotated[int, Form()] = 0,
        top_k: Annotated[int, Form()] = 10,
        crop: Annotated[str, Form()] = "",
        rerank: Annotated[str, Form()] = "none",
        item: Annotated[int | None, Form()] = None,
        file: Annotated[UploadFile | None, File()] = None,
    ) -> dict:
        chosen = catalogue.index(index)
        if file is not None and file.filename:
            query = read_upload(await file.read(max_upload_bytes + 1), max_upload_bytes)
        elif item is not None:
            if not 0 <= item < len(chosen.items):
                raise HTTPException(404, f"no item {item} in index {index}")
            query = open_image(chosen.item_path(item))
        else:
            raise HTTPException(422, "upload an image or pick one from the collection")
        try:
            model = await run_in_threadpool(catalogue.model, index)
            results = await run_in_threadpool(
                search_image, chosen, model, query, max(1, min(top_k, 100)), crop or None, rerank
            )
        except CbirError as err:
            raise HTTPException(400, str(err)) from err
        return {
            "results": [
                {
                    "id": r["id"],
                    "name": Path(r["path"]).name,
                    "score": r["score"],
                    "url": f"/api/indexes/{index}/images/{r['id']}",
                }
                for r in results
            ]
        }

    @app.exception_handler(CbirError)
    async def user_error(request: Request, err: CbirError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 400)

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app
