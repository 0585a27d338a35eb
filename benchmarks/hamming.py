"""Hamming search over bit-packed codes vs float dot-product search over the same database.

The database holds relaxed k-bit codes (as a DSH net outputs them: a class's +-1 centre plus noise).
Float search: faiss ``IndexFlatIP`` over the float32 codes. Hamming search: faiss ``IndexBinaryFlat``
(popcount) over their signs, packed 8 bits a byte. Prints seconds of each top-k search, the memory
ratio, the mAP each ranking gives on the full database (``retrieval_metrics``; Hamming ties broken
by index), then one JSON line.

    .venv/bin/python benchmarks/hamming.py [--queries 1000] [--database 100000] [--bits 48] [--k 100]
"""

from __future__ import annotations

import argparse
import json

import faiss
import numpy as np
import torch
from timing import significant, timed

from cbir_lightning.metrics import retrieval_metrics
from cbir_lightning.retrieval.hamming import binary_index, hamming_distances, hamming_knn, pack_codes


def relaxed_codes(n: int, centres: torch.Tensor, noise: float, g: torch.Generator):
    labels = torch.randint(0, len(centres), (n,), generator=g)
    return centres[labels] + noise * torch.randn(n, centres.shape[1], generator=g), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=100_000)
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--noise", type=float, default=1.2)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--map-queries", type=int, default=200, help="queries ranked in full for mAP")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.bits % 8:
        parser.error("--bits must be a multiple of 8 (faiss binary indexes work on whole bytes)")

    g = torch.Generator().manual_seed(args.seed)
    centres = torch.randint(0, 2, (args.classes, args.bits), generator=g).float() * 2 - 1
    database, db_labels = relaxed_codes(args.database, centres, args.noise, g)
    queries, q_labels = relaxed_codes(args.queries, centres, args.noise, g)
    faiss.omp_set_num_threads(torch.get_num_threads())

    float_db, float_q = database.numpy().astype(np.float32), queries.numpy().astype(np.float32)
    flat = faiss.IndexFlatIP(args.bits)
    flat.add(float_db)
    float_s, _ = timed(lambda: flat.search(float_q, args.k), args.repeats)
    packed_db, packed_q = pack_codes(database), pack_codes(queries)
    binary = binary_index(packed_db)
    hamming_s, _ = timed(lambda: hamming_knn(packed_q, binary, args.k), args.repeats)

    m = min(args.map_queries, args.queries)
    float_map = retrieval_metrics(queries[:m], database, q_labels[:m], db_labels, ks=(args.k,))["mAP"]
    hamming_map = retrieval_metrics(
        queries[:m],
        database,
        q_labels[:m],
        db_labels,
        similarity=lambda q, d: hamming_distances(pack_codes(q), pack_codes(d)).neg().float(),
        ks=(args.k,),
    )["mAP"]
    float_bytes, packed_bytes = float_db.nbytes, packed_db.nbytes
    for name, seconds, value, size in (
        ("float dot-product", float_s, float_map, float_bytes),
        ("Hamming popcount ", hamming_s, hamming_map, packed_bytes),
    ):
        print(f"{name} top-{args.k}: {seconds:.4f} s   mAP {float(value):.4f}   {size} bytes")
    out = {
        "benchmark": "hamming",
        "queries": args.queries,
        "database": args.database,
        "bits": args.bits,
        "k": args.k,
        "float_s": significant(float_s),
        "hamming_s": significant(hamming_s),
        "speedup": significant(float_s / hamming_s),
        "float_bytes": float_bytes,
        "packed_bytes": packed_bytes,
        "memory_ratio": round(float_bytes / packed_bytes, 3),
        "float_mAP": round(float(float_map), 6),
        "hamming_mAP": round(float(hamming_map), 6),
        "map_queries": m,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
