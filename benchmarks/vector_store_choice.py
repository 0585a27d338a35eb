"""Which database engine backs ``--store``: Milvus (milvus-lite embedded) vs Qdrant (qdrant-client local mode)
on the same synthetic clustered unit vectors (as ``index_scale.py``): insert + index build seconds, search p95
/ mean ms of single queries, recall@10 against exact (faiss flat), peak resident memory of the process and its
children (milvus-lite runs its engine in a child process). One JSON line per engine and index kind.

    .venv/bin/python benchmarks/vector_store_choice.py [--size 100000] [--dim 128] [--queries 200]

Qdrant is not a dependency of the toolkit: ``pip install qdrant-client`` to measure it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from knn import clustered
from peak_memory import PeakMemory
from timing import significant

from cbir_lightning.retrieval import knn_recall
from cbir_lightning.retrieval.faiss_knn import FaissKnn

BATCH = 1000  # rows per insert call


def milvus(folder: Path, database: np.ndarray, kind: str):
    from pymilvus import DataType, MilvusClient  # optional: the store extra

    client = MilvusClient(str(folder / "bench.db"))
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=database.shape[1])
    params = client.prepare_index_params()
    extra = {"M": 16, "efConstruction": 200} if kind == "HNSW" else {}
    params.add_index("vector", index_type=kind, metric_type="IP", params=extra)
    client.create_collection("bench", schema=schema, index_params=params)
    for start in range(0, len(database), BATCH):
        rows = database[start : start + BATCH]
        client.insert("bench", [{"id": start + i, "vector": v} for i, v in enumerate(rows.tolist())])
    client.flush("bench")
    client.load_collection("bench")
    search = {"metric_type": "IP", "params": {"ef": 64} if kind == "HNSW" else {}}

    def query(q: np.ndarray, k: int) -> list[int]:
        hits = client.search("bench", data=[q.tolist()], anns_field="vector", limit=k, search_params=search)
        return [h["id"] for h in hits[0]]

    return query, client.close


def qdrant(folder: Path, database: np.ndarray, kind: str):
    from qdrant_client import QdrantClient, models  # optional: only this comparison needs it

    client = QdrantClient(path=str(folder / "qdrant"))
    client.create_collection(
        "bench", vectors_config=models.VectorParams(size=database.shape[1], distance=models.Distance.DOT)
    )
    for start in range(0, len(database), BATCH):
        rows = database[start : start + BATCH]
        client.upsert("bench", models.Batch(ids=list(range(start, start + len(rows))), vectors=rows.tolist()))

    def query(q: np.ndarray, k: int) -> list[int]:
        return [p.id for p in client.query_points("bench", query=q.tolist(), limit=k).points]

    return query, client.close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--engines", nargs="+", default=["milvus:FLAT", "milvus:HNSW", "qdrant:local"])
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(1000, args.dim, generator=g) / args.dim**0.5
    database = clustered(args.size, centers, 1.5 / args.dim**0.5, g).numpy()
    queries = clustered(args.queries, centers, 1.5 / args.dim**0.5, g).numpy()
    _, exact = FaissKnn(database, "dot").search(torch.from_numpy(queries), args.k, rescore=False)
    for spec in args.engines:
        engine, _, kind = spec.partition(":")
        folder = Path(tempfile.mkdtemp(prefix="store-choice-"))
        try:
            with PeakMemory(tree=True) as peak:
                start = time.perf_counter()
                query, close = (milvus if engine == "milvus" else qdrant)(folder, database, kind)
                build_s = time.perf_counter() - start
                times, found = [], []
                for q in queries:
                    begin = time.perf_counter()
                    found.append(query(q, args.k))
                    times.append((time.perf_counter() - begin) * 1000)
            close()
            recall = knn_recall(torch.tensor(found), exact)
            print(
                json.dumps(
                    {
                        "benchmark": "vector_store_choice",
                        "engine": engine,
                        "index": kind,
                        "size": args.size,
                        "dim": args.dim,
                        "queries": args.queries,
                        "build_s": significant(build_s, 4),
                        "p95_ms": significant(float(np.percentile(times, 95)), 4),
                        "mean_ms": significant(float(np.mean(times)), 4),
                        f"recall@{args.k}": round(float(recall), 4),
                        "peak_rss_mb": round(peak.bytes / 2**20, 1),
                    }
                ),
                flush=True,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
