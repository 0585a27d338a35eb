"""``build_index``: embed a folder of images into an index folder, incrementally and atomically.

Guarantees: only one run writes an index folder at a time (an OS lock); the live version is replaced
atomically and the one before it is kept for readers that resolved ``CURRENT`` just before; only folders
this toolkit wrote are ever deleted; a folder that is neither empty nor the toolkit's index (its marker,
see :mod:`~cbir_lightning.search.manifest`), or that lies inside the image folder, is refused; a file that
vanishes or changes while it is indexed is skipped and listed. Nothing is left behind: a run that fails
on a folder it created removes it again, its working files (the file list for DDP workers, 0600) live
inside the index folder and a killed run's are removed by the next run; a full disk is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from cbir_lightning.digest import file_sha256
from cbir_lightning.errors import CbirError
from cbir_lightning.export.onnx_embedder import read_metadata
from cbir_lightning.retrieval import approximate as tuning
from cbir_lightning.retrieval.approximate import Tuned, tune_approximate
from cbir_lightning.retrieval.faiss_knn import FaissKnn
from cbir_lightning.search.embed import check_options, embed_files, image_header, is_launched_worker
from cbir_lightning.search.files import (
    DEFAULT_MAX_PIXELS,
    DRAFT_ABOVE_PIXELS,
    Decoding,
    open_image,
    scan_collection,
)
from cbir_lightning.search.lock import HOLDER, index_lock
from cbir_lightning.search.manifest import (
    CURRENT,
    EMBEDDINGS,
    FAISS_INDEX,
    FORMAT_VERSION,
    INDEX_MARKER,
    LOCK,
    MANIFEST,
    current_version,
    index_marker,
    is_toolkit_index,
    new_version,
    publish,
    read_manifest,
    toolkit_versions,
    write_index_marker,
)
from cbir_lightning.search.model import SearchModel, check_model_args, load_search_model

FULL_DECODING = Decoding(size=None)  # how indexes written before the manifest's "decoding" decoded
FILE_LIST_ENV = "CBIR_INDEX_FILE_LIST"  # rank 0's list of files to embed, for the DDP worker processes
FILE_LIST_PREFIX = ".index-files-"  # that list, a private file in the index folder
# what a killed run leaves in the index folder: the list, and the temporary files of atomic writes
LITTER = (f"{FILE_LIST_PREFIX}*.json", f".{CURRENT}.*.tmp", f".{INDEX_MARKER}.*.tmp")


def check_count(value, flag: str, unit: str) -> None:
    """CbirError (one line) unless ``value`` is a positive ``int`` (not a bool): ``flag`` counts ``unit``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CbirError(f"{flag} must be a positive number of {unit}, got {value!r}")


def model_record(model, onnx: bool) -> dict:
    """The manifest's ``model``: the checkpoint (or export) path, its identity, whether it is ONNX."""
    record = {"checkpoint": str(model.checkpoint), "identity": model.identity}
    return {**record, "onnx": True} if onnx else record


def decoding_record(decoding: Decoding) -> dict:
    """What of ``decoding`` changes the vectors (recorded in the manifest; a change re-embeds)."""
    return {"draft_above_pixels": DRAFT_ABOVE_PIXELS if decoding.size else None, "size": decoding.size}


def _previous(
    out: Path, images: Path, model: SearchModel, whitening: dict | None, decoding: Decoding
) -> tuple[dict, np.ndarray]:
    """Reusable rows of the live index, ``{path: (item, row)}``, if the same model indexed ``images``
    decoding as ``decoding`` and the live version is readable (otherwise nothing is reused: the index is
    rebuilt)."""
    try:
        manifest, version = read_manifest(out)
    except CbirError:
        return {}, np.zeros((0, 0), np.float32)
    same = (
        manifest.get("model", {}).get("identity") == model.identity
        and manifest.get("whitening") == whitening
        and manifest.get("images_root") == str(images)
        and manifest.get("decoding", decoding_record(FULL_DECODING)) == decoding_record(decoding)
    )
    if not same:
        print(f"{out}: built by another model, whitening, decoding or folder; embedding every image again")
        return {}, np.zeros((0, 0), np.float32)
    try:
        embeddings = np.load(version / EMBEDDINGS, allow_pickle=False)
    except (OSError, ValueError) as err:
        print(f"{version / EMBEDDINGS} is unreadable ({err}); embedding every image again")
        return {}, np.zeros((0, 0), np.float32)
    return {item["path"]: (item, row) for row, item in enumerate(manifest["items"])}, embeddings


def write_faiss(vectors: np.ndarray, path: Path) -> None:
    """The inner-product k-NN index over ``vectors`` (``faiss.index``, read by ``SearchIndex.open``)."""
    FaissKnn(np.ascontiguousarray(vectors, dtype=np.float32), "dot").save(path)


def approximate_knn(vectors: np.ndarray, scoring: str, target_recall: float) -> Tuned:
    """``index --approximate``: the inner-product index over ``vectors`` tuned for ``target_recall`` at 10
    (:func:`~cbir_lightning.retrieval.approximate.tune_approximate`: HNSW below 10^6 vectors, IVF-Flat
    above, exact below :data:`~cbir_lightning.retrieval.approximate.MIN_SIZE`); exact when the model scores
    with its own similarity (faiss is not used to search then)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if scoring == "model":
        reason = "the model scores with its own similarity (faiss is not searched): exact search"
        return Tuned(FaissKnn(vectors, "dot"), "flat", target=target_recall, reason=reason)
    return tune_approximate(vectors, "dot", target_recall, min_size=tuning.MIN_SIZE)


def check_out_folder(out: Path, images: Path) -> None:
    """CbirError (one line, naming the folder and the fix) unless ``out`` may hold the index of ``images``:
    it lies outside ``images`` and is new, empty (but for an index run's ``.lock``) or an index
    folder this toolkit wrote (``is_toolkit_index``: its marker; a folder holding someone else's
    ``CURRENT``, such as a LevelDB folder, is not one)."""
    real_out, real_images = out.resolve(), images.resolve()
    if real_out == real_images or real_out.is_relative_to(real_images):
        raise CbirError(
            f"index folder {out} is inside the image folder {images} being indexed; pass an --out folder "
            f"outside {images}"
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise CbirError(f"--out {out} is a file; pass a new or empty folder, or an index folder")
    if is_toolkit_index(out):
        return
    foreign = sorted(c.name for c in out.iterdir() if not _own_lock(c))
    if foreign:
        shown = CURRENT if CURRENT in foreign else foreign[0]
        raise CbirError(
            f"--out {out} is not empty and holds no index written by `cbir-lightning index` (it has "
            f"{shown!r}); pass a new or empty folder, or an existing index folder"
        )


def _own_lock(path: Path) -> bool:
    """A ``.lock`` an index run wrote: a small regular file, empty or naming its holder (as
    ``index_lock`` writes it; a run that just created the folder holds it, or one that failed left it)."""
    try:
        if path.name != LOCK or path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
            return False
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return text == "" or HOLDER.fullmatch(text) is not None


def _clear_litter(out: Path) -> None:
    """Remove what killed runs left in the index folder ``out`` (``LITTER``); call it holding the lock."""
    for pattern in LITTER:
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)


def _give_up_new_folder(out: Path) -> None:
    """Remove what this run wrote in ``out``, a folder it created and fails to finish, and the folder if
    that empties it (holding the lock: no other run writes there)."""
    _clear_litter(out)
    _prune(out, keep=set())
    for name in (INDEX_MARKER, CURRENT, LOCK):
        (out / name).unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:
        pass


@contextmanager
def disk_errors(out: Path):
    """An ``OSError`` while writing ``out`` (a full disk, a read-only or vanished folder) as one line;
    the live index is untouched by then (a new version is published only once complete)."""
    try:
        yield
    except OSError as err:
        raise CbirError(
            f"cannot write the index in {out} ({err.strerror or err}); free space or pass another --out "
            "(the previous index, if any, is unchanged)"
        ) from err


def _live_version(out: Path) -> Path | None:
    """The live version of ``out``, or None if it has none or its ``CURRENT`` is corrupt (rebuilt)."""
    try:
        return current_version(out)
    except CbirError as err:
        print(f"{err}: building a new index")
        return None


def _prune(out: Path, keep: set[Path]) -> None:
    """Delete the version folders this toolkit wrote in ``out``, except those in ``keep``."""
    for version in toolkit_versions(out):
        if version not in keep:
            shutil.rmtree(version, ignore_errors=True)


def _plan(
    images: Path,
    out: Path | None,
    model: SearchModel,
    whitening: dict | None,
    decoding: Decoding,
    previous: tuple[dict, np.ndarray | None] | None = None,
) -> dict:
    """What a run must do: ``items``/``rows`` (None where the file is to be embedded; reused item and
    vector otherwise), ``todo`` ``[(rel, stat, header)]``, ``skipped``, ``reused`` and the old paths.
    ``previous``: ``({path: (item, row)}, vectors)`` of an index kept elsewhere (a database store: vectors
    None, reused rows stay where they are); default: the live version of the index folder ``out``."""
    relative, skipped = scan_collection(images)
    if not relative:
        raise CbirError(f"no jpg/png/webp images under {images}; nothing to index")
    reuse, old = previous if previous is not None else _previous(out, images, model, whitening, decoding)
    items, rows, todo, reused = [], [], [], 0
    for rel in relative:
        try:
            stat = (images / rel).stat()
        except OSError:
            skipped.append({"path": rel, "reason": "vanished while being indexed"})
            continue
        prev = reuse.get(rel)
        if prev and prev[0]["size"] == stat.st_size and prev[0]["mtime_ns"] == stat.st_mtime_ns:
            items.append(prev[0])
            rows.append(None if old is None else old[prev[1]])
            reused += 1
            continue
        header = image_header(images / rel, decoding)
        if isinstance(header, str):
            skipped.append({"path": rel, "reason": header})
            continue
        todo.append((rel, stat, header))
        items.append(None)
        rows.append(None)
    return {
        "items": items,
        "rows": rows,
        "todo": todo,
        "skipped": skipped,
        "reused": reused,
        "removed": len(set(reuse) - set(relative)),
    }


def _embedded_item(images: Path, rel: str, stat: os.stat_result) -> dict | str:
    """The manifest item of a file just embedded, or why it is skipped: it vanished, or its size or
    mtime differ from those seen before embedding (then its vector may be of other content)."""
    try:
        digest = file_sha256(images / rel)
        after = (images / rel).stat()
    except FileNotFoundError:
        return "vanished while being indexed"
    except OSError as err:
        return f"cannot read it ({err.strerror or err})"
    if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        return "changed while being indexed; run `cbir-lightning index` again to add it"
    return {"path": rel, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}


def _unreadable_reason(path: Path, decoding: Decoding) -> str:
    if not path.exists():
        return "vanished while being indexed"
    try:
        open_image(path, None, decoding.max_pixels, decoding.size)
    except CbirError as err:
        return str(err).split(": ", 1)[-1]
    return "could not be decoded"


def _embed_in_worker(
    ckpt: str | Path, batch_size: int, trainer_options: dict | None, max_pixels: int
) -> None:
    """A DDP worker process: embed its shard of exactly rank 0's file list (read from the file named by
    ``CBIR_INDEX_FILE_LIST``) and hand it to rank 0 in ``embed_files``."""
    model = SearchModel.load(ckpt)
    listed = json.loads(Path(os.environ[FILE_LIST_ENV]).read_text())
    paths, headers = [Path(p) for p, _ in listed], [tuple(h) for _, h in listed]
    decoding = Decoding(max_pixels, model.decode_size)
    embed_files(model, paths, headers, batch_size, decoding, trainer_options)


def _embed_listed(
    model,
    paths: list[Path],
    headers: list,
    batch_size: int,
    options: dict | None,
    out: Path | None,
    decoding: Decoding,
):
    """``embed_files`` on rank 0, with the file list written to a private file (0600) in the index folder
    ``out`` named in the environment, so the DDP workers Lightning Fabric launches embed exactly these
    files (not their own scan); removed afterwards (a killed run's by the next run). ``out`` None: one
    process (a database store), no list."""
    if out is None:
        print(f"embedding {len(paths)} images", flush=True)
        return embed_files(model, paths, headers, batch_size, decoding, options)
    with disk_errors(out):
        fd, listing = tempfile.mkstemp(dir=out, prefix=FILE_LIST_PREFIX, suffix=".json")
    try:
        with disk_errors(out), os.fdopen(fd, "w") as f:
            json.dump([[str(p), list(h)] for p, h in zip(paths, headers, strict=True)], f)
    except BaseException:
        Path(listing).unlink(missing_ok=True)
        raise
    os.environ[FILE_LIST_ENV] = listing
    try:
        print(f"embedding {len(paths)} images", flush=True)
        return embed_files(model, paths, headers, batch_size, decoding, options)
    finally:
        os.environ.pop(FILE_LIST_ENV, None)
        Path(listing).unlink(missing_ok=True)


def _write_version(out: Path, manifest: dict, embeddings: np.ndarray, knn: FaissKnn | None = None) -> Path:
    """A complete new version folder in ``out`` (marker first, every file fsynced); removed if writing
    fails. ``knn``: the faiss index to write (default: exact over ``embeddings``)."""
    version = new_version(out)
    try:
        np.save(version / EMBEDDINGS, embeddings)
        if knn is None:
            write_faiss(embeddings, version / FAISS_INDEX)
        else:
            knn.save(version / FAISS_INDEX)
        (version / MANIFEST).write_text(json.dumps(manifest))
        for name in (EMBEDDINGS, FAISS_INDEX, MANIFEST):
            with open(version / name, "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    return version


def build_index(
    ckpt: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 32,
    trainer_options: dict | None = None,
    onnx_model: str | Path | None = None,
    approximate: bool = False,
    target_recall: float = 0.95,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict | None:
    """Index every jpg/png/webp below ``images`` with the checkpoint into the folder ``out``.

    ``approximate``: write a faiss HNSW / IVF index tuned to reach ``target_recall`` at 10 (see
    :func:`approximate_knn`); the manifest's ``faiss`` entry records its kind, parameters and measured
    recall, and ``search`` applies them. Default: exact (no ``faiss`` entry: the format of earlier indexes).

    ``max_pixels``: files whose header declares more pixels are skipped and listed, nothing decoded (a
    9400x9400 PNG of 86 KB would take ~4 GB); JPEGs above ``DRAFT_ABOVE_PIXELS`` are decoded reduced to
    twice the model's ``image_size`` (``search.files.reduce_for``), as ``serve`` decodes uploads.

    ``onnx_model`` (with ``ckpt`` None): embed with a file written by ``cbir-lightning export`` on ONNX
    Runtime (CPU, no DDP); the manifest records that file and its SHA-256. Either way the files go through
    :func:`~cbir_lightning.search.embed.embed_files` (``inference.embed_dataset``); ``trainer_options``:
    its device settings (Lightning Fabric's ``accelerator``, ``devices``, ``strategy``, ``num_nodes``) and
    ``enable_progress_bar``.

    Unchanged files (same path, size and mtime, same model and whitening) keep their vectors; new or
    changed ones are embedded; deleted ones are dropped; unreadable files, files that vanish or change
    during the run and symlinks out of ``images`` are skipped and listed. Returns None in a DDP worker.
    """
    check_count(batch_size, "--batch-size", "images")
    check_count(max_pixels, "--max-pixels", "pixels")
    check_model_args(ckpt, onnx_model)
    check_options(trainer_options)
    if approximate and not 0 < target_recall <= 1:
        raise CbirError(f"--target-recall must lie in (0, 1], got {target_recall}")
    if onnx_model is not None:  # a missing or foreign file is refused before the index folder is touched
        read_metadata(onnx_model)
    images, out = Path(images).resolve(), Path(out)
    if onnx_model is None and is_launched_worker() and FILE_LIST_ENV in os.environ:
        return _embed_in_worker(ckpt, batch_size, trainer_options, max_pixels)
    if not images.is_dir():
        scan_collection(images)  # CbirError naming the missing folder
    check_out_folder(out, images)
    # a worker started without rank 0's list (e.g. on another node): same plan
    if onnx_model is None and is_launched_worker():
        model = SearchModel.load(ckpt)
        decoding = Decoding(max_pixels, model.decode_size)
        plan = _plan(images, out, model, model.describe_whitening(), decoding)
        todo = plan["todo"]
        if todo:
            paths, headers = [images / rel for rel, _, _ in todo], [h for _, _, h in todo]
            embed_files(model, paths, headers, batch_size, decoding, trainer_options)
        return None
    created = not out.exists()
    with disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    with index_lock(out):
        try:
            with disk_errors(out):
                _clear_litter(out)
                if index_marker(out) is None:
                    write_index_marker(out)
            job = {
                "ckpt": ckpt,
                "onnx_model": onnx_model,
                "batch_size": batch_size,
                "trainer_options": trainer_options,
                "approximate": approximate,
                "target_recall": target_recall,
                "max_pixels": max_pixels,
            }
            return _build(images, out, job)
        except BaseException:
            if created:
                _give_up_new_folder(out)
            raise


def _embed_todo(
    model: SearchModel,
    images: Path,
    out: Path | None,
    plan: dict,
    batch_size: int,
    options: dict | None,
    decoding: Decoding,
):
    """Embed the plan's new and changed files into its ``items``/``rows``; those that vanished, changed or
    could not be decoded meanwhile go to its ``skipped``. ``out``: the index folder (for the DDP file
    list; None: one process)."""
    items, rows, todo, skipped = plan["items"], plan["rows"], plan["todo"], plan["skipped"]
    paths, headers = [images / rel for rel, _, _ in todo], [h for _, _, h in todo]
    vectors, labels = _embed_listed(model, paths, headers, batch_size, options, out, decoding)
    vectors = vectors.numpy()
    slots = [i for i, item in enumerate(items) if item is None]
    for j, (slot, (rel, stat, _)) in enumerate(zip(slots, todo, strict=True)):
        path = images / rel
        found = _embedded_item(images, rel, stat) if labels[j] >= 0 else _unreadable_reason(path, decoding)
        if isinstance(found, str):
            skipped.append({"path": rel, "reason": found})
            continue
        items[slot], rows[slot] = found, vectors[j]


def _build(images: Path, out: Path, job: dict) -> dict:
    """The work of ``build_index`` (its arguments in ``job``) once the folder is locked and marked."""
    onnx_model = job["onnx_model"]
    model = load_search_model(job["ckpt"], onnx_model)
    whitening = model.describe_whitening()
    decoding = Decoding(job["max_pixels"], getattr(model, "decode_size", None))
    plan = _plan(images, out, model, whitening, decoding)
    if plan["todo"]:
        _embed_todo(model, images, out, plan, job["batch_size"], job["trainer_options"], decoding)
    items, rows, skipped = plan["items"], plan["rows"], plan["skipped"]
    keep = [i for i, item in enumerate(items) if item is not None]
    if not keep:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        raise CbirError(f"no readable image under {images} ({reasons}); nothing to index")
    items = [items[i] for i in keep]
    embeddings = np.stack([rows[i] for i in keep]).astype(np.float32)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images_root": str(images),
        "model": model_record(model, onnx_model is not None),
        "whitening": whitening,
        "decoding": decoding_record(decoding),
        "dimension": int(embeddings.shape[1]),
        "scoring": model.scoring(torch.from_numpy(embeddings[:16])),
        "count": len(items),
        "items": items,
        "skipped": skipped,
    }
    knn = None
    if job["approximate"]:
        tuned = approximate_knn(embeddings, manifest["scoring"], job["target_recall"])
        knn, manifest["faiss"] = tuned.knn, tuned.describe()
    with disk_errors(out):
        version = _write_version(out, manifest, embeddings, knn)
        previous = _live_version(out)
        publish(out, version)
    _prune(out, keep={version, previous})  # the previous version stays for readers that just opened it
    return {
        "index": str(out),
        "count": len(items),
        "embedded": len(items) - plan["reused"],
        "reused": plan["reused"],
        "removed": plan["removed"],
        "skipped": skipped,
        "dimension": manifest["dimension"],
        "whitening": whitening is not None,
        **({"faiss": manifest["faiss"]} if job["approximate"] else {}),
    }
