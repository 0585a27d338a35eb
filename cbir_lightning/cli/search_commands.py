"""``index``, ``search``, ``recommend``, ``serve``: image search over a folder with a trained checkpoint or
model file (or its ONNX export, ``--model``, or a config's own model, ``--config``); ``convert``: a
checkpoint to a model file; ``export``: its embedder to ONNX. None of them imports a data set."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from jsonargparse.typing import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)

from cbir_lightning.api import Index
from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import ModelFile, is_model_file
from cbir_lightning.search.files import crop_image, open_image, parse_crop
from cbir_lightning.search.query import TEXT_WEIGHT
from cbir_lightning.search.sheet import contact_sheet
from cbir_lightning.search.store import is_store_address, parse_store
from cbir_lightning.web.access import TOKEN_ENV, is_loopback
from cbir_lightning.web.access import allowed_hosts as host_list

PORT = restricted_number_type("Port", int, [(">=", 0), ("<=", 65535)])  # a TCP port (0: any free one)
SIMILARITY_THRESHOLD = restricted_number_type("SimilarityThreshold", float, [(">", 0), ("<=", 1)])


def index(
    images: str,
    out: str | None = None,
    ckpt: str | None = None,
    batch_size: int = 32,
    accelerator: str = "auto",
    devices: int = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    model: str | None = None,
    approximate: bool = False,
    target_recall: float = 0.95,
    config_file: str | None = None,
    max_pixels: int = 25_000_000,
    store: str | None = None,
    metadata: str | None = None,
    text_columns: list[str] | None = None,
) -> dict | None:
    """Embed every jpg/png/webp below --images into the index folder --out or a database --store.

    Args:
        ckpt: checkpoint written by ``cbir-lightning fit`` (its whitening file beside it is applied), or a
            model file (``best.model`` of a fit, ``cbir-lightning convert``: no DataModule is rebuilt).
        model: instead of ``--ckpt``, an ONNX file written by ``cbir-lightning export``, run with ONNX
            Runtime on the CPU (no checkpoint needed; ``--devices``/``--strategy`` do not apply); a model
            file given here is used as with ``--ckpt``.
        images: folder searched recursively.
        out: index folder: new, empty or an existing index (any other folder, or one inside ``images``, is
            refused; only version folders written by this command are ever deleted, and the previous
            version is kept for readers). Unchanged files keep their vectors, deleted ones are dropped;
            files that vanish or change during the run and symlinks out of ``images`` are skipped and listed.
        batch_size: images embedded at a time (grouped by size); a positive number.
        accelerator: where the module embeds (``auto``, ``cpu``, ``gpu``; Lightning Fabric).
        devices / strategy / num_nodes: Lightning Fabric settings; ``--devices 4 --strategy ddp`` shards
            the images over 4 processes (GPUs), and rank 0 gathers the vectors and writes the index.
        approximate: write an approximate faiss index (HNSW below 10^6 images, IVF-Flat above) whose search
            parameter is tuned on a held-out sample of the index to reach ``--target-recall`` at 10; the
            manifest records kind, parameter and measured recall, and ``search`` uses them. Below 10000
            images (or with a model that scores with its own similarity) the index stays exact and the
            manifest says why. Default: exact.
        target_recall: recall@10 the approximate index must reach (``--target-recall``, in (0, 1]).
        max_pixels: images whose header declares more pixels are skipped and listed without decoding
            (25 MP: a 6000x4000 camera photo; a small PNG declaring 9400x9400 would need ~4 GB). JPEGs
            over 4 MP are decoded reduced (1/2 to 1/8 scale) to twice the model's image size, as in
            ``serve``.
        config_file: (``--config``) instead of ``--ckpt``, a ``fit`` config whose model is used with its own
            weights (e.g. ``configs/wikiart_pretrained.yaml``: ImageNet EfficientNet-Lite0 + GeM, no
            training). It is written as the checkpoint ``<trainer.default_root_dir>/checkpoints/config.ckpt``
            (``fit``'s format), which the index records and ``search``/``recommend`` load.
        store: instead of ``--out``, a database: ``milvus:PATH.db`` (Milvus Lite, a local database created
            there) or ``milvus://HOST:PORT`` (a Milvus server or cluster), ``#NAME`` at the end for another
            collection than ``images``. Incremental too: new and changed files are embedded and upserted,
            deleted ones deleted. Exact inner-product search (dot-product models only).
        metadata: with ``--store``, a ``.tsv``/``.csv`` with a ``path`` column (relative to ``--images``)
            and any others, stored with each vector: ``search --where`` filters on them, results carry
            them.
        text_columns: the metadata columns ``search --text`` ranks by (BM25), e.g. ``"[title, artist]"``;
            default: every text column.
    """
    if config_file is not None:
        if ckpt is not None or model is not None:
            raise CbirError("pass one of --ckpt, --model and --config (the model to index with)")
        from cbir_lightning.cli.lightning_cli import config_checkpoint  # Lightning's CLI: --config only

        ckpt = str(config_checkpoint(config_file))
        print(f"model of {config_file}: {ckpt}")
    if (out is None) == (store is None):
        raise CbirError("pass where to index: --out FOLDER or --store milvus:PATH.db (one of them)")
    if store is not None:
        parse_store(store)  # an unknown scheme is one line, before any work
    options = {"accelerator": accelerator, "devices": devices, "strategy": strategy, "num_nodes": num_nodes}
    if model is not None and is_model_file(model):  # a model file: as --ckpt (devices apply)
        ckpt, model = model, None
    if model is not None:
        if (devices, strategy, num_nodes) != (1, "auto", 1) or accelerator not in ("auto", "cpu"):
            raise CbirError(
                "--model runs on ONNX Runtime in one CPU process; drop --accelerator/--devices/--strategy/"
                "--num-nodes, or index with --ckpt"
            )
        options = None
    built = Index.build(
        images,
        out if store is None else store,
        ckpt=ckpt,
        onnx=model,
        batch_size=batch_size,
        trainer_options=options,
        approximate=approximate,
        target_recall=target_recall,
        max_pixels=max_pixels,
        metadata=metadata,
        text_columns=text_columns,
    )
    if built is None:  # a DDP worker process: rank 0 reports
        return None
    for skipped in built.report["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['reason']}")
    return built.report


def search(
    index: str | None = None,
    query: str | None = None,
    top_k: PositiveInt = 10,
    crop: str | None = None,
    rerank: str = "none",
    sheet: str | None = None,
    ckpt: str | None = None,
    model: str | None = None,
    store: str | None = None,
    where: str | None = None,
    text: str | None = None,
    text_weight: NonNegativeFloat = TEXT_WEIGHT,
) -> list:
    """The indexed images most similar to a query image or text (filters, crop, re-ranking, contact sheet).

    Prints a JSON list of ``{"path", "score"}`` (and ``"metadata"`` from a store indexed with
    ``--metadata``), the ``top_k`` best first.

    Args:
        index: index folder built by ``cbir-lightning index`` (or a store address, as ``--store``).
        store: instead of ``--index``, the database store indexed with ``index --store``.
        query: query image file.
        where: (a store) only items whose metadata satisfy this Milvus filter expression, e.g.
            ``"style == 'Rococo' and year < 1800"``, ``"artist in ['canaletto', 'guardi']"``; evaluated by
            the engine during the search.
        text: (a store) rank by BM25 over the text columns; with ``--query`` too, the image and text
            rankings are fused by reciprocal rank fusion.
        text_weight: the text ranking's weight in the fusion (the image ranking's is 1; 0.5 measured best on
            the paintings' titles, see the vector store page of the documentation).
        top_k: number of results (``--top-k``).
        crop: ``x0,y0,x1,y1`` region of the query in pixels.
        rerank: ``none``, ``aqe`` (alpha query expansion), ``dba`` (database-side augmentation) or
            ``diffusion``, applied to the first 100 results.
        sheet: also write a contact sheet (query + results with scores; ``.jpg``/``.jpeg``: JPEG, otherwise
            PNG).
        ckpt: the index's checkpoint at another path, or its model file (must be the same model).
        model: the index's ONNX model (``cbir-lightning export``) at another path, or an export of the
            index's checkpoint (same whitening), run with ONNX Runtime.
    """
    parse_crop(crop)  # a bad --crop is refused (one line) before any work
    opened = Index.open(_where(index, store), ckpt=ckpt, onnx=model)
    if query is None:
        if not text:
            raise CbirError("pass --query IMAGE, --text WORDS or both")
        if sheet or crop:
            raise CbirError("--sheet and --crop need a query image (--query)")
        found = opened.search(None, top_k, where=where, text=text, text_weight=text_weight)
        return [_printed(r) for r in found]
    opened.embedder  # noqa: B018 (the index's model is checked before the query is read)
    image = open_image(query)
    found = opened.search(image, top_k, crop, rerank, where=where, text=text, text_weight=text_weight)
    results = [_printed(r) for r in found]
    if sheet:
        contact_sheet(crop_image(image, parse_crop(crop)), results, sheet)
        print(f"contact sheet: {sheet}")
    return results


def _where(index: str | None, store: str | None) -> str:
    """The index to open: ``--index`` or ``--store`` (one of them)."""
    if (index is None) == (store is None):
        raise CbirError("pass the index to search: --index FOLDER or --store milvus:PATH.db (one of them)")
    if store is not None:
        parse_store(store)  # an unknown scheme is one line
    return index if store is None else store


def _printed(result) -> dict:
    """A result as printed: path, score, and the metadata of a store indexed with --metadata."""
    printed = {"path": result.path, "score": result.score}
    return printed if result.metadata is None else {**printed, "metadata": result.metadata}


def recommend(
    index: str | None = None,
    image: str | None = None,
    top_k: PositiveInt = 10,
    duplicate_threshold: SIMILARITY_THRESHOLD = 0.98,
    ckpt: str | None = None,
    model: str | None = None,
    sheet: str | None = None,
    store: str | None = None,
) -> dict:
    """Indexed items similar to an image, without its exact and near duplicates.

    Exact duplicates have the same file hash; near duplicates score at least ``duplicate_threshold``.

    Args:
        index: index folder built by ``cbir-lightning index``.
        image: the item to recommend for.
        top_k: number of recommendations (``--top-k``).
        duplicate_threshold: results scoring at least this are near duplicates (``--duplicate-threshold``).
        ckpt: the index's checkpoint at another path, or its model file (must be the same model).
        model: the index's ONNX model at another path, or an export of its checkpoint (see ``search``).
        sheet: also write a contact sheet (the image + its recommendations with scores; ``.jpg``/``.jpeg``:
            JPEG, otherwise PNG).
        store: instead of ``--index``, the database store indexed with ``index --store``.
    """
    if image is None:
        raise CbirError("pass --image IMAGE: the item to recommend for")
    opened = Index.open(_where(index, store), ckpt=ckpt, onnx=model)
    opened.embedder  # noqa: B018 (the index's model is checked before the image is read)
    result = opened.recommend(image, top_k, duplicate_threshold)
    results = [{"path": r.path, "score": r.score} for r in result["results"]]
    if sheet:
        contact_sheet(open_image(image), results, sheet)
        print(f"contact sheet: {sheet}")
    return {
        "results": results,
        "exact_duplicates": [r.path for r in result["exact_duplicates"]],
        "near_duplicates": [r.path for r in result["near_duplicates"]],
    }


def serve(
    index: str | list[str],
    host: str = "127.0.0.1",
    port: PORT = 8000,
    max_upload_mb: PositiveFloat = 10.0,
    max_upload_pixels: PositiveInt = 25_000_000,
    max_concurrent: PositiveInt = 2,
    max_waiting: NonNegativeInt = 16,
    allowed_hosts: list[str] | None = None,
    token: str | None = None,
    insecure: bool = False,
    token_file: str | None = None,
) -> dict:
    """Web page to search indexes: upload or pick a query, crop it, see the results grid.

    Loopback only by default. Requests whose Host header is not ``127.0.0.1``, ``localhost``, ``[::1]``,
    the bind host or one of ``--allowed-hosts`` get 400 (DNS rebinding). With a token (``--token`` or the
    environment variable ``CBIR_SERVE_TOKEN``) every ``/api`` request needs it (``Authorization: Bearer
    TOKEN``, or open the page once as ``http://HOST:PORT/?token=TOKEN``, which sets a cookie). Binding a
    non-loopback host without a token refuses to start unless ``--insecure`` says that is intended.
    Pass the token in a file (``--token-file``) or the environment (``CBIR_SERVE_TOKEN``): ``--token`` on
    the command line is visible to every user of the machine in ``ps``.
    A rebuilt index (``cbir-lightning index`` again) is served within a second, without a restart.
    Error responses carry an error id, never a server path; the details go to the log (stderr).

    Args:
        index: an index folder or a database store (``milvus:art.db``), or several as ``--index "[A, B]"``
            (chosen in the page). A store indexed with ``--metadata`` shows its columns under each result
            and takes a filter and a text (hybrid search) beside the upload.
        host: interface to listen on (loopback by default; ``0.0.0.0`` exposes it to the network and then
            needs ``--token`` or ``--insecure``).
        port: TCP port.
        max_upload_mb: largest accepted upload.
        max_upload_pixels: largest accepted upload in pixels, read from the image header before decoding
            (25 MP: a 6000x4000 camera photo).
        max_concurrent: searches decoded and embedded at once; more wait.
        max_waiting: searches that may wait for a slot; beyond that (or after 30 s of waiting) 503.
        allowed_hosts: more Host names accepted, e.g. ``"[myhost.lan, 192.168.1.5]"``; ``"[*]"`` any.
        token: the bearer token clients must send; visible in ``ps``: prefer ``--token-file`` or
            ``$CBIR_SERVE_TOKEN`` (the default).
        token_file: a file whose first line is the token (e.g. mode 0600), read at start.
        insecure: allow a non-loopback ``host`` without a token.
    """
    # the web server and app (FastAPI, uvicorn: heavy imports) for serve only
    import uvicorn

    from cbir_lightning.web.app import create_app

    token = serve_token(token, token_file)
    if not is_loopback(host) and not token and not insecure:
        raise CbirError(
            f"--host {host} exposes the server to the network; set a token with --token or "
            f"${TOKEN_ENV} (or pass --insecure to serve without one)"
        )
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cbir_lightning.web").setLevel(logging.INFO)  # reloads, errors with their ids

    index = [index] if isinstance(index, str) else list(index)
    app = create_app(
        [p if is_store_address(p) else Path(p) for p in index],
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_upload_pixels=max_upload_pixels,
        max_concurrent=max_concurrent,
        max_waiting=max_waiting,
        allowed_hosts=host_list(host, allowed_hosts),
        token=token,
    )
    where = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    hint = " (open it once as /?token=TOKEN)" if token else ""
    print(f"serving {len(index)} index(es) on {where}{hint}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return {"served": [str(p) for p in index], "host": host, "port": port}


def serve_token(token: str | None, token_file: str | None) -> str | None:
    """The token ``serve`` requires: ``--token``, else the first line of ``--token-file``, else
    ``$CBIR_SERVE_TOKEN``; None: no token. CbirError (one line) for both flags, or an unreadable or empty
    file; a note on stderr for ``--token`` (other users see it in ``ps``)."""
    if token and token_file:
        raise CbirError("pass the token once: --token or --token-file")
    if token:
        note = f"--token is visible to other users in `ps`; use --token-file or ${TOKEN_ENV}"
        sys.stderr.write(f"cbir-lightning: note: {note}\n")
        return token
    if token_file:
        try:
            lines = Path(token_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise CbirError(f"--token-file {token_file}: cannot read it ({err})") from err
        if not lines or not lines[0].strip():
            raise CbirError(f"--token-file {token_file} is empty; put the token on its first line")
        return lines[0].strip()
    return os.environ.get(TOKEN_ENV) or None


def convert(ckpt: str, out: str) -> dict:
    """Convert a checkpoint and its whitening file to one model file for index/search (no DataModule).

    The model file holds the module's class, arguments and weights, the preprocessing as data, the
    whitening, the similarity and the checkpoint's identity (indexes built from the checkpoint stay
    valid); ``fit`` writes one itself (``checkpoints/best.model``). Prints JSON (model_file, checkpoint,
    dim, similarity, whitening).

    Args:
        ckpt: checkpoint written by ``cbir-lightning fit`` (older ones too: their DataModule gives the
            preprocessing).
        out: the model file to write (e.g. ``model.cbir``).
    """
    model_file = ModelFile.from_checkpoint(ckpt)
    written = model_file.save(out)
    return {
        "model_file": str(written),
        "checkpoint": str(Path(ckpt).resolve()),
        "dim": model_file.dim,
        "similarity": model_file.similarity,
        "whitening": model_file.whitening is not None,
    }


def export(out: str, ckpt: str | None = None, model: str | None = None, opset: int = 17) -> dict:
    """Export a model file's (or a checkpoint's) embedder to ONNX, parity-checked (index/search --model).

    Dynamic batch axis; input size, preprocessing (the model file's), scoring and whitening in its
    metadata. Prints JSON with ``max_abs_diff``.

    Args:
        out: the ``.onnx`` file to write (``index``/``search``/``recommend --model``).
        ckpt: checkpoint written by ``cbir-lightning fit`` (its whitening file beside it is folded in),
            converted in memory to a model file, or a model file.
        model: instead of ``--ckpt``, a model file (``best.model`` of a fit, ``cbir-lightning convert``,
            ``whiten``): exported with its preprocessing and whitening, no DataModule rebuilt.
        opset: ONNX opset version.
    """
    from cbir_lightning.export.onnx_export import export_onnx  # onnx and ONNX Runtime: heavy imports

    if (ckpt is None) == (model is None):
        raise CbirError("pass exactly one of --ckpt CKPT (a checkpoint) and --model MODEL (a model file)")
    if model is not None and not is_model_file(model):
        if not Path(model).is_file():
            raise CbirError(f"model file {model} not found; write one with `cbir-lightning convert`")
        raise CbirError(
            f"--model {model} is not a model file (`cbir-lightning convert` writes one); pass a checkpoint "
            "as --ckpt"
        )
    return export_onnx(ckpt if ckpt is not None else model, out, opset)
