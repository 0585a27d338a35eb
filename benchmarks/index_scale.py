"""Index cost curve: exact (faiss flat) vs the tuned approximate index (``index --approximate``) on synthetic
clustered unit vectors of 10^4 ... 10^6 items.

Per size: build seconds (approximate: building and tuning for ``--target-recall``), index bytes, peak RSS
growth while building, search p95 / mean milliseconds per batch of ``--batch`` queries (faiss's own search,
as ``cbir-lightning search`` runs it), recall@10 of the approximate index on new queries (not in the index)
against the exact one, and the speed-up (exact p95 / approximate p95; the JSON line also has the ratio of
the means). One JSON line per size.

``--store``: also the database backend (``index --store milvus:PATH.db``: Milvus Lite, the toolkit's own
collection schema and ``MilvusStore.vector_search``, exact ``FLAT`` inner product) against the folder's
faiss flat index on the same vectors: insert seconds, peak RSS of the process and its children (the engine
runs in one), p95 / mean ms of ``--store-queries`` single queries, recall@10 against faiss exact. One more
JSON line per size (``"benchmark": "index_scale_store"``).

    .venv/bin/python benchmarks/index_scale.py [--sizes 10000 100000 1000000] [--dim 128] [--queries 500]
    .venv/bin/python benchmarks/index_scale.py --sizes 100000 1000000 --store --store-queries 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from knn import clustered
from peak_memory import PeakMemory
from timing import significant

from cbir_lightning.retrieval import knn_recall
from cbir_lightning.retrieval.approximate import tune_approximate
from cbir_lightning.retrieval.faiss_knn import FaissKnn
from cbir_lightning.search.metadata import Metadata


def batch_times(index, queries: np.ndarray, batch: int, k: int) -> tuple[list[float], np.ndarray]:
    """Seconds of each ``index.search`` of ``batch`` queries, and the ids found ``[nq, k]``."""
    times, found = [], []
    for start in range(0, len(queries), batch):
        begin = time.perf_counter()
        _, ids = index.search(queries[start : start + batch], k)
        times.append(time.perf_counter() - begin)
        found.append(ids)
    return times, np.concatenate(found)


def measure(build, queries: np.ndarray, batch: int, k: int) -> dict:
    """Build (timed, peak RSS growth), index bytes, search p95 / mean ms per batch, ids found."""
    with PeakMemory() as peak:
        start = time.perf_counter()
        built = build()
        build_s = time.perf_counter() - start
    knn = built.knn if hasattr(built, "knn") else built
    times, found = batch_times(knn.index, queries, batch, k)
    ms = np.array(times) * 1000
    return {
        "built": built,
        "build_s": significant(build_s, 4),
        "index_bytes": int(len(faiss.serialize_index(knn.index))),
        "peak_rss_bytes": int(peak.bytes),
        "p95_ms": significant(float(np.percentile(ms, 95)), 4),
        "mean_ms": significant(float(ms.mean()), 4),
        "found": found,
    }


def store_rows(vectors: np.ndarray, start: int, row) -> list[dict]:
    """The store's own rows (``row``: ``store_build._row``) of synthetic vectors: no metadata, no text."""
    item = {"size": 1, "mtime_ns": 1, "sha256": ""}
    no_metadata = Metadata({}, {})
    return [row({**item, "path": f"{start + i:08d}.jpg"}, v, no_metadata, []) for i, v in enumerate(vectors)]


def measure_store(database: np.ndarray, queries: np.ndarray, k: int) -> dict:
    """Build a Milvus Lite store of ``database`` (timed, peak RSS of the process tree), then search each
    query alone through ``MilvusStore.vector_search``: p95 / mean ms and the rows found."""
    from cbir_lightning.search.milvus_store import FORMAT_VERSION, MAGIC, MilvusStore, connect
    from cbir_lightning.search.store import parse_store
    from cbir_lightning.search.store_build import BATCH, _row, create_collection

    folder = Path(tempfile.mkdtemp(prefix="index-scale-store-"))
    try:
        address = parse_store(f"milvus:{folder / 'scale.db'}")
        manifest = {"magic": MAGIC, "format_version": FORMAT_VERSION, "images_root": "", "model": {}}
        manifest.update(dimension=database.shape[1], scoring="dot", columns={}, count=len(database))
        with PeakMemory(tree=True) as peak:
            start = time.perf_counter()
            client = connect(address, create=True)
            create_collection(client, address, database.shape[1], {}, manifest)
            for first in range(0, len(database), BATCH * 4):
                client.insert(
                    address.collection, store_rows(database[first : first + BATCH * 4], first, _row)
                )
            client.flush(address.collection)
            store = MilvusStore.open(address)
            build_s = time.perf_counter() - start
            times, found = [], []
            for q in queries:
                begin = time.perf_counter()
                hits = store.vector_search(torch.from_numpy(q[None]), k)
                times.append((time.perf_counter() - begin) * 1000)
                found.append([int(h["id"][:8]) for h in hits])
        store.close()
        client.close()
        ms = np.array(times)
        return {
            "build_s": significant(build_s, 4),
            "peak_rss_bytes": int(peak.bytes),
            "p95_ms": significant(float(np.percentile(ms, 95)), 4),
            "mean_ms": significant(float(ms.mean()), 4),
            "found": np.array(found),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compare_store(n: int, database, queries: np.ndarray, args) -> None:
    """The folder backend's exact faiss index vs the database backend on the same vectors: one JSON line."""
    queries = queries[: args.store_queries]
    with PeakMemory(tree=True) as peak:
        exact = measure(lambda: FaissKnn(database, "dot"), queries, 1, args.k)
    exact["peak_rss_bytes"] = int(peak.bytes)
    store = measure_store(database.numpy(), queries, args.k)
    recall = knn_recall(torch.from_numpy(store["found"]), torch.from_numpy(exact["found"]))
    row = {"benchmark": "index_scale_store", "size": n, "dim": args.dim, "queries": len(queries), "k": args.k}
    row["threads"] = torch.get_num_threads()
    row[f"store_recall@{args.k}"] = round(recall, 5)
    for name, measured in (("folder_faiss", exact), ("milvus_lite", store)):
        row.update(
            {f"{name}_{key}": measured[key] for key in ("build_s", "peak_rss_bytes", "p95_ms", "mean_ms")}
        )
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.5)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1, help="queries per search call (1: interactive)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--min-size", type=int, default=10_000, help="below it the index stays exact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", action="store_true", help="also the Milvus Lite store vs faiss exact")
    parser.add_argument("--store-only", action="store_true", help="only that comparison")
    parser.add_argument("--store-queries", type=int, default=100, help="single queries of that comparison")
    args = parser.parse_args()
    faiss.omp_set_num_threads(torch.get_num_threads())
    print(
        f"{'size':>9} {'kind':>5} {'build s':>8} {'MB':>7} {'peak MB':>8} {'p95 ms':>8} {'mean ms':>8} "
        f"{'recall@' + str(args.k):>9} {'speed-up':>8}  parameters"
    )
    for n in args.sizes:
        g = torch.Generator().manual_seed(args.seed)
        centers = torch.randn(args.classes, args.dim, generator=g) / args.dim**0.5
        noise = args.noise / args.dim**0.5
        database = clustered(n, centers, noise, g)
        queries = clustered(args.queries, centers, noise, g).numpy()
        if args.store or args.store_only:
            compare_store(n, database, queries, args)
        if args.store_only:
            continue
        exact = measure(lambda database=database: FaissKnn(database, "dot"), queries, args.batch, args.k)
        approx = measure(
            lambda database=database: tune_approximate(
                database, "dot", args.target_recall, args.k, seed=args.seed, min_size=args.min_size
            ),
            queries,
            args.batch,
            args.k,
        )
        tuned = approx["built"]
        recall = knn_recall(torch.from_numpy(approx["found"]), torch.from_numpy(exact["found"]))
        speedup = exact["p95_ms"] / approx["p95_ms"]
        for name, row in (("exact", exact), (tuned.kind, approx)):
            mb, peak_mb = row["index_bytes"] / 2**20, row["peak_rss_bytes"] / 2**20
            tail = f"{recall:9.4f} {speedup:7.2f}x  {tuned.params}" if row is approx else ""
            print(
                f"{n:9d} {name:>5} {row['build_s']:8.2f} {mb:7.1f} {peak_mb:8.1f} {row['p95_ms']:8.3f} "
                f"{row['mean_ms']:8.3f} {tail}",
                flush=True,
            )
        out = {
            "benchmark": "index_scale",
            "size": n,
            "dim": args.dim,
            "queries": args.queries,
            "batch": args.batch,
            "k": args.k,
            "threads": torch.get_num_threads(),
            "target_recall": args.target_recall,
            "approximate_kind": tuned.kind,
            "approximate_params": tuned.params,
            "tuning_recall": round(tuned.recall, 5),
            f"recall@{args.k}": round(recall, 5),
            "speedup_p95": significant(speedup, 4),
            "speedup_mean": significant(exact["mean_ms"] / approx["mean_ms"], 4),
        }
        for name, row in (("exact", exact), ("approximate", approx)):
            out.update({f"{name}_{key}": row[key] for key in row if key not in ("built", "found")})
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
