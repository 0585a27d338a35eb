"""``build_index``: embed a folder of images into an index folder, incrementally and atomically."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from cbir_lightning.errors import CbirError
from cbir_lightning.search.embed import image_header, is_launched_worker, predict_embeddings
from cbir_lightning.search.files import file_sha256, open_image, scan_images
from cbir_lightning.search.lock import index_lock
from cbir_lightning.search.manifest import (
    EMBEDDINGS,
    FAISS_INDEX,
    FORMAT_VERSION,
    MANIFEST,
    current_version,
    publish,
    read_manifest,
)
from cbir_lightning.search.model import SearchModel


def _previous(out: Path, images: Path, model: SearchModel, whitening: dict | None) -> tuple[dict, np.ndarray]:
    """Reusable rows of the live index, ``{path: (item, row)}``, if the same model indexed ``images``."""
    try:
        manifest, version = read_manifest(out)
    except CbirError:
        return {}, np.zeros((0, 0), np.float32)
    same = (
        manifest.get("model", {}).get("identity") == model.identity
        and manifest.get("whitening") == whitening
        and manifest.get("images_root") == str(images)
    )
    if not same:
        print(f"{out}: built by another model, whitening or folder; embedding every image again")
        return {}, np.zeros((0, 0), np.float32)
    embeddings = np.load(version / EMBEDDINGS, allow_pickle=False)
    return {item["path"]: (item, row) for row, item in enumerate(manifest["items"])}, embeddings


def write_faiss(vectors: np.ndarray, path: Path) -> None:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(path))


def _clean_stale(out: Path, keep: Path | None) -> None:
    for child in out.iterdir():
        if child.is_dir() and child.name.startswith("v-") and (keep is None or child != keep):
            shutil.rmtree(child, ignore_errors=True)


def build_index(
    ckpt: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 32,
    trainer_options: dict | None = None,
) -> dict:
    """Index every jpg/png/webp below ``images`` with the checkpoint into the folder ``out``.

    Unchanged files (same path, size and mtime, same model and whitening) keep their vectors; new or
    changed ones are embedded; deleted ones are dropped; unreadable ones are skipped and listed.
    """
    images, out = Path(images).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    worker = is_launched_worker()
    with nullcontext() if worker else index_lock(out):
        relative = scan_images(images)
        if not relative:
            raise CbirError(f"no jpg/png/webp images under {images}; nothing to index")
        model = SearchModel.load(ckpt)
        whitening = model.describe_whitening()
        reuse, old = _previous(out, images, model, whitening)
        if not worker:
            _clean_stale(out, current_version(out))
        items, rows, todo, skipped, reused = [], [], [], [], 0
        for rel in relative:
            stat = (images / rel).stat()
            prev = reuse.get(rel)
            if prev and prev[0]["size"] == stat.st_size and prev[0]["mtime_ns"] == stat.st_mtime_ns:
                items.append(prev[0])
                rows.append(old[prev[1]])
                reused += 1
                continue
            header = image_header(images / rel)
            if isinstance(header, str):
                skipped.append({"path": rel, "reason": header})
                continue
            todo.append((rel, stat, header))
            items.append(None)
            rows.append(None)
        if todo:
            paths = [images / rel for rel, _, _ in todo]
            raw, labels, _ = predict_embeddings(
                model.module, paths, [h for _, _, h in todo], model.transform, batch_size, trainer_options
            )
            if worker:
                return None
            vectors = model.post_process(raw).numpy()
            fresh = iter(range(len(todo)))
            for slot in [i for i, item in enumerate(items) if item is None]:
                j = next(fresh)
                rel, stat, _ = todo[j]
                if labels[j] < 0:
                    try:
                        open_image(images / rel)
                        reason = "could not be decoded"
                    except CbirError as err:
                        reason = str(err).split(": ", 1)[-1]
                    skipped.append({"path": rel, "reason": reason})
                    continue
                items[slot] = {
                    "path": rel,
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "sha256": file_sha256(images / rel),
                }
                rows[slot] = vectors[j]
        keep = [i for i, item in enumerate(items) if item is not None]
        if not keep:
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
            raise CbirError(f"no readable image under {images} ({reasons}); nothing to index")
        items = [items[i] for i in keep]
        embeddings = np.stack([rows[i] for i in keep]).astype(np.float32)
        scoring = model.scoring(torch.from_numpy(embeddings[:16]))
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "images_root": str(images),
            "model": {"checkpoint": str(model.checkpoint), "identity": model.identity},
            "whitening": whitening,
            "dimension": int(embeddings.shape[1]),
            "scoring": scoring,
            "count": len(items),
            "items": items,
            "skipped": skipped,
        }
        version = out / f"v-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        version.mkdir()
        np.save(version / EMBEDDINGS, embeddings)
        write_faiss(embeddings, version / FAISS_INDEX)
        (version / MANIFEST).write_text(json.dumps(manifest))
        for name in (EMBEDDINGS, FAISS_INDEX, MANIFEST):
            with open(version / name, "rb") as f:
                os.fsync(f.fileno())
        previous = current_version(out)
        publish(out, version)
        if previous is not None and previous != version:
            shutil.rmtree(previous, ignore_errors=True)
        return {
            "index": str(out),
            "count": len(items),
            "embedded": len(items) - reused,
            "reused": reused,
            "removed": len(set(reuse) - set(relative)),
            "skipped": skipped,
            "dimension": manifest["dimension"],
            "whitening": whitening is not None,
        }
