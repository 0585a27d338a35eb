"""``index``, ``search``, ``recommend``, ``serve``: image search over a folder with a trained checkpoint."""

from __future__ import annotations

from pathlib import Path


def index(
    ckpt: str,
    images: str,
    out: str,
    batch_size: int = 32,
    accelerator: str = "auto",
    devices: int = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
) -> dict | None:
    """Embed every jpg/png/webp below ``images`` into the index folder ``out`` (incremental, atomic).

    Args:
        ckpt: checkpoint written by ``cbir-lightning fit`` (its whitening file beside it is applied).
        images: folder searched recursively.
        out: index folder; unchanged files keep their vectors, deleted ones are dropped.
        batch_size: images embedded at a time (grouped by size).
        accelerator: Lightning accelerator for the predict loop (``auto``, ``cpu``, ``gpu``).
        devices / strategy / num_nodes: Lightning Trainer settings; ``--devices 4 --strategy ddp`` shards
            the images over 4 processes (GPUs), and rank 0 gathers the vectors and writes the index.
    """
    from cbir_lightning.search.index import build_index

    options = {"accelerator": accelerator, "devices": devices, "strategy": strategy, "num_nodes": num_nodes}
    result = build_index(ckpt, images, out, batch_size, options)
    if result is None:  # a DDP worker process: rank 0 reports
        return None
    for skipped in result["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['reason']}")
    return result


def search(
    index: str,
    query: str,
    top_k: int = 10,
    crop: str | None = None,
    rerank: str = "none",
    sheet: str | None = None,
    ckpt: str | None = None,
) -> list:
    """The ``top_k`` indexed images most similar to ``query``: JSON list of ``{"path", "score"}``.

    Args:
        index: index folder built by ``cbir-lightning index``.
        query: query image file.
        top_k: number of results (``--top-k``).
        crop: ``x0,y0,x1,y1`` region of the query in pixels.
        rerank: ``none``, ``aqe`` (alpha query expansion), ``dba`` (database-side augmentation) or
            ``diffusion``, applied to the first 100 results.
        sheet: also write a contact sheet PNG (query + results with scores).
        ckpt: the index's checkpoint at another path (must be the same model).
    """
    from cbir_lightning.search.files import crop_image, open_image, parse_crop
    from cbir_lightning.search.query import SearchIndex, search_image
    from cbir_lightning.search.sheet import contact_sheet

    opened = SearchIndex.open(index)
    model = opened.load_model(ckpt)
    image = open_image(query)
    results = search_image(opened, model, image, top_k, crop, rerank)
    if sheet:
        contact_sheet(crop_image(image, parse_crop(crop)), results, sheet)
        print(f"contact sheet: {sheet}")
    return [{"path": r["path"], "score": r["score"]} for r in results]


def recommend(
    index: str, image: str, top_k: int = 10, duplicate_threshold: float = 0.98, ckpt: str | None = None
) -> dict:
    """Items similar to ``image``, without its exact duplicates (same file hash) and near duplicates.

    Args:
        index: index folder built by ``cbir-lightning index``.
        image: the item to recommend for.
        top_k: number of recommendations (``--top-k``).
        duplicate_threshold: results scoring at least this are near duplicates (``--duplicate-threshold``).
        ckpt: the index's checkpoint at another path (must be the same model).
    """
    from cbir_lightning.search.query import SearchIndex, recommend_image

    opened = SearchIndex.open(index)
    model = opened.load_model(ckpt)
    result = recommend_image(opened, model, image, top_k, duplicate_threshold)
    return {
        "results": [{"path": r["path"], "score": r["score"]} for r in result["results"]],
        "exact_duplicates": [r["path"] for r in result["exact_duplicates"]],
        "near_duplicates": [r["path"] for r in result["near_duplicates"]],
    }


def serve(
    index: str | list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 10.0,
) -> dict:
    """Web page to search indexes: upload or pick a query, crop it, see the results grid.

    Args:
        index: an index folder, or several as ``--index "[A, B]"`` (chosen in the page).
        host: interface to listen on (loopback by default; ``0.0.0.0`` exposes it to the network).
        port: TCP port.
        max_upload_mb: largest accepted upload.
    """
    import uvicorn

    from cbir_lightning.web.app import create_app

    index = [index] if isinstance(index, str) else list(index)
    app = create_app([Path(p) for p in index], max_upload_bytes=int(max_upload_mb * 1024 * 1024))
    print(f"serving {len(index)} index(es) on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return {"served": [str(p) for p in index], "host": host, "port": port}
