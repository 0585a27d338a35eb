"""``build_store_index``: ``cbir-lightning index --store``: embed a folder of images into a Milvus collection,
incrementally (new and changed files are embedded and upserted, deleted ones deleted, the rest untouched).

Data safety, as for the index folder: the database is created only at the ``PATH.db`` asked for, never
inside the image folder, and never over a file or folder that is not a Milvus Lite database; only a
collection this toolkit wrote (its manifest property) is ever written to or dropped; a run that fails on a
database or collection it created removes it again; a run that fails on an existing collection leaves every
row it did not reach as it was (rows are upserted by path, the manifest is written last), and the next run
completes it. One writer at a time: Milvus Lite holds its database for one process; on a server, run one
``index`` per collection at a time.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cbir_lightning.errors import CbirError
from cbir_lightning.search.files import DEFAULT_MAX_PIXELS, Decoding, scan_collection
from cbir_lightning.search.index import _embed_todo, _plan, check_count, decoding_record, model_record
from cbir_lightning.search.metadata import Metadata, read_metadata
from cbir_lightning.search.milvus_store import (
    FORMAT_VERSION,
    MAGIC,
    MANIFEST_PROPERTY,
    OWN_FIELDS,
    PATH_MAX,
    TEXT_MAX,
    connect,
    milvus_module,
    paths_filter,
    read_manifest_property,
    short,
)
from cbir_lightning.search.model import check_model_args, load_search_model
from cbir_lightning.search.store import StoreAddress, parse_store

BATCH = 500  # rows per upsert
SKIPPED_KEPT = 100  # skipped files listed in the manifest property (the command prints them all)


def text_of(values: dict, text_columns: list[str]) -> str:
    """The ``text`` field of a row: its text columns' values joined by spaces (None and '' left out)."""
    return " ".join(str(values[c]) for c in text_columns if values.get(c) not in (None, ""))[:TEXT_MAX]


def create_collection(client, address: StoreAddress, dim: int, columns: dict[str, str], manifest: dict):
    """The collection: path (primary key), vector (FLAT, inner product: exact), size, mtime_ns, sha256, the
    metadata columns (nullable), text (analysed) and its BM25 sparse vector (Milvus's full-text search)."""
    pymilvus = milvus_module()
    types = pymilvus.DataType
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("path", types.VARCHAR, is_primary=True, max_length=PATH_MAX)
    schema.add_field("vector", types.FLOAT_VECTOR, dim=dim)
    schema.add_field("size", types.INT64)
    schema.add_field("mtime_ns", types.INT64)
    schema.add_field("sha256", types.VARCHAR, max_length=64)
    kinds = {"int": types.INT64, "float": types.DOUBLE}
    for name, kind in columns.items():
        extra = {} if kind in kinds else {"max_length": TEXT_MAX}
        schema.add_field(name, kinds.get(kind, types.VARCHAR), nullable=True, **extra)
    schema.add_field("text", types.VARCHAR, max_length=TEXT_MAX, enable_analyzer=True)
    schema.add_field("sparse", types.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        pymilvus.Function(
            name="text_bm25",
            function_type=pymilvus.FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )
    params = client.prepare_index_params()
    params.add_index("vector", index_type="FLAT", metric_type="IP")
    params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(
        address.collection,
        schema=schema,
        index_params=params,
        properties={MANIFEST_PROPERTY: json.dumps(manifest)},
    )


def _stored_items(client, address: StoreAddress, columns: dict) -> dict:
    """``{path: row}`` of every stored row (no vectors), read in batches."""
    found = {}
    iterator = client.query_iterator(
        address.collection, batch_size=1000, filter="", output_fields=[*OWN_FIELDS, *columns, "text"]
    )
    try:
        while batch := iterator.next():
            found.update({row["path"]: row for row in batch})
    finally:
        iterator.close()
    return found


def _changed_key(old: dict | None, new: dict) -> str | None:
    """The first of what makes stored rows unusable that differs between two builds, or None."""
    keys = ("images_root", "model", "whitening", "decoding", "columns", "text_columns")
    return next((k for k in keys if old is not None and old.get(k) != new.get(k)), None)


def _check_places(address: StoreAddress, images: Path) -> bool:
    """Refuse a database inside the image folder; True if this run creates the database."""
    path = address.db_path
    if path is None:
        return False
    real = path.resolve()
    if real == images or real.is_relative_to(images):
        raise CbirError(
            f"--store {address}: the database would lie inside the image folder {images}; put it outside"
        )
    return not path.exists()


def build_store_index(
    ckpt: str | Path | None,
    images: str | Path,
    store: str,
    metadata: str | Path | None = None,
    text_columns: list[str] | None = None,
    batch_size: int = 32,
    trainer_options: dict | None = None,
    onnx_model: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict:
    """Index every jpg/png/webp below ``images`` into the Milvus collection ``store`` (see the module).

    ``metadata``: a ``.tsv``/``.csv`` with a ``path`` column (relative to ``images``) and other columns,
    stored with each vector (:mod:`~cbir_lightning.search.metadata`). ``text_columns``: the columns
    ``search --text`` ranks by (BM25); default: every text column of the table."""
    check_model_args(ckpt, onnx_model)
    check_count(batch_size, "--batch-size", "images")
    options = trainer_options or {}
    if (options.get("devices", 1), options.get("strategy", "auto"), options.get("num_nodes", 1)) != (
        1,
        "auto",
        1,
    ):
        raise CbirError("--store indexes in one process; drop --devices/--strategy/--num-nodes")
    address = parse_store(store)
    images = Path(images).resolve()
    if not images.is_dir():
        scan_collection(images)  # CbirError naming the missing folder
    table = read_metadata(metadata) if metadata is not None else Metadata({}, {})
    texts = _text_columns(table, text_columns)
    milvus_module()
    model = load_search_model(ckpt, onnx_model)
    created_db = _check_places(address, images)
    client = connect(address, create=True)
    old = read_manifest_property(client, address)  # CbirError for a collection not ours
    created_collection = False
    try:
        whitening = model.describe_whitening()
        decoding = Decoding(max_pixels, getattr(model, "decode_size", None))
        manifest = {
            "magic": MAGIC,
            "format_version": FORMAT_VERSION,
            "images_root": str(images),
            "model": model_record(model, onnx_model is not None),
            "whitening": whitening,
            "decoding": decoding_record(decoding),
            "columns": table.columns,
            "text_columns": texts,
        }
        changed_key = _changed_key(old, manifest)
        same = old is not None and changed_key is None
        if changed_key is not None:
            print(f"{address}: its {changed_key} differs from this run's; embedding every image again")
        if same:
            client.load_collection(address.collection)
        stored = _stored_items(client, address, table.columns) if same else {}
        previous = ({p: (row, None) for p, row in stored.items()}, None)
        plan = _plan(images, None, model, whitening, decoding, previous)
        if plan["todo"]:
            _embed_todo(model, images, None, plan, batch_size, trainer_options, decoding)
        items, rows = plan["items"], plan["rows"]
        keep = [i for i, item in enumerate(items) if item is not None]
        if not keep:
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in plan["skipped"][:3])
            raise CbirError(f"no readable image under {images} ({reasons}); nothing to index")
        fresh = [i for i in keep if rows[i] is not None]
        if fresh:
            sample = torch.from_numpy(np.stack([rows[i] for i in fresh[:16]]).astype(np.float32))
            if model.scoring(sample) != "dot":
                raise CbirError(
                    f"--store needs vectors ranked by their dot product, but the model of {model.checkpoint} "
                    "scores with its own learned similarity; index it into a folder with --out"
                )
            dimension = int(len(rows[fresh[0]]))
        else:
            dimension = old["dimension"]
        # reused rows whose metadata or text changed are rewritten with their stored vectors
        changed = [
            i for i in keep if rows[i] is None and _row_changed(stored[items[i]["path"]], table, texts)
        ]
        if changed:
            found = client.query(
                address.collection,
                filter=paths_filter([items[i]["path"] for i in changed]),
                output_fields=["path", "vector"],
            )
            vectors = {r["path"]: r["vector"] for r in found}
            for i in changed:
                rows[i] = np.asarray(vectors[items[i]["path"]], dtype=np.float32)
        if old is not None and not same:
            client.drop_collection(address.collection)  # ours (its manifest property), rebuilt below
            old = None
        manifest.update(dimension=dimension, scoring="dot")
        if old is None:
            create_collection(client, address, dimension, table.columns, manifest)
            created_collection = True
        written = [i for i in keep if rows[i] is not None]
        for start in range(0, len(written), BATCH):
            chunk = written[start : start + BATCH]
            client.upsert(address.collection, [_row(items[i], rows[i], table, texts) for i in chunk])
        removed = sorted(set(stored) - {items[i]["path"] for i in keep})
        for start in range(0, len(removed), BATCH):
            client.delete(address.collection, filter=paths_filter(removed[start : start + BATCH]))
        manifest.update(
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            count=len(keep),
            skipped=plan["skipped"][:SKIPPED_KEPT],
        )
        client.flush(address.collection)
        client.alter_collection_properties(
            address.collection, properties={MANIFEST_PROPERTY: json.dumps(manifest)}
        )
    except BaseException as err:
        _give_up(client, address, created_collection, created_db)
        if type(err).__module__.split(".")[0] == "pymilvus":
            raise CbirError(f"cannot write store {address} ({short(err)})") from err
        raise
    client.close()
    matched = sum(1 for i in keep if items[i]["path"] in table.rows)
    return {
        "store": str(address),
        "count": len(keep),
        "embedded": len(fresh),
        "reused": plan["reused"],
        "removed": len(removed),
        "metadata_rows": matched,
        "columns": table.columns,
        "text_columns": texts,
        "skipped": plan["skipped"],
        "dimension": dimension,
        "whitening": whitening is not None,
    }


def _text_columns(table: Metadata, chosen: list[str] | None) -> list[str]:
    """The text columns: ``chosen`` (each a column of the table) or every ``str`` column."""
    if chosen is None:
        return [name for name, kind in table.columns.items() if kind == "str"]
    unknown = [c for c in chosen if c not in table.columns]
    if unknown:
        raise CbirError(
            f"--text-columns {unknown[0]!r} is not a column of --metadata (its columns: "
            f"{', '.join(table.columns) or 'none'})"
        )
    return list(chosen)


def _row(item: dict, vector: np.ndarray, table: Metadata, texts: list[str]) -> dict:
    values = table.row(item["path"])
    return {
        "path": item["path"],
        "vector": np.asarray(vector, dtype=np.float32).tolist(),
        "size": int(item["size"]),
        "mtime_ns": int(item["mtime_ns"]),
        "sha256": item["sha256"],
        **values,
        "text": text_of(values, texts),
    }


def _row_changed(stored: dict, table: Metadata, texts: list[str]) -> bool:
    values = table.row(stored["path"])
    return any(stored.get(k) != v for k, v in values.items()) or stored.get("text") != text_of(values, texts)


def _give_up(client, address: StoreAddress, created_collection: bool, created_db: bool) -> None:
    """Remove what a failed run created: its collection, and its Milvus Lite database."""
    try:
        if created_collection:
            client.drop_collection(address.collection)
        client.close()
    except Exception:  # the engine may be what failed; the database folder is removed below anyway
        pass
    if created_db and address.db_path is not None and address.db_path.is_dir():
        shutil.rmtree(address.db_path, ignore_errors=True)
