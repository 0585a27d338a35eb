"""Index cost curve: exact (faiss flat) vs the tuned approximate index (``index --approximate``) on synthetic
clustered unit vectors of 10^4 ... 10^6 items.

Per size: build seconds (approximate: building and tuning for ``--target-recall``), index bytes, peak RSS
growth while building, search p95 / mean milliseconds per batch of ``--batch`` queries (faiss's own search,
as ``cbir-lightning search`` runs it), recall@10 of the approximate index on new queries (not in the index)
against the exact one, and the speed-up (exact p95 / approximate p95; the JSON line also has the ratio of
the means). One JSON line per size.

    .venv/bin/python benchmarks/index_scale.py [--sizes 10000 100000 1000000] [--dim 128] [--queries 500]
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
import torch
from knn import clustered
from peak_memory import PeakMemory
from timing import significant

from cbir_lightning.retrieval import knn_recall
from cbir_lightning.retrieval.approximate import tune_approximate
from cbir_lightning.retrieval.faiss_knn import FaissKnn


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
