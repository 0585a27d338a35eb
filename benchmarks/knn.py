"""k-NN search: this toolkit's exact top-k (the default, and its torch / faiss flat backends) vs raw faiss
IndexFlatIP, and the approximate faiss IVF / HNSW options' recall@10 and speed-up over exact search, on
clustered random unit vectors.

Prints seconds of each search (index building reported apart), whether our exact backends return
identical rankings, then one JSON line (``ours_vs_faiss_flat_ratio``: raw faiss seconds / ours).

    .venv/bin/python benchmarks/knn.py [--queries 10000] [--database 50000] [--dim 128] [--k 10]
"""

from __future__ import annotations

import argparse
import json

import faiss
import torch
import torch.nn.functional as F
from timing import timed

from cbir_lightning.retrieval import knn_index, knn_recall


def clustered(n: int, centers: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    labels = torch.randint(0, len(centers), (n,), generator=generator)
    return F.normalize(centers[labels] + noise * torch.randn(n, centers.shape[1], generator=generator), dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--database", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.5)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    centers = torch.randn(args.classes, args.dim, generator=g) / args.dim**0.5
    database = clustered(args.database, centers, args.noise / args.dim**0.5, g)
    query = clustered(args.queries, centers, args.noise / args.dim**0.5, g)
    k = args.k
    faiss.omp_set_num_threads(torch.get_num_threads())

    ours = knn_index(database, "dot")  # the default exact search: torch or faiss flat by batch size
    ours_s, (_, exact) = timed(lambda: ours.search(query, k), args.repeats)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(database.numpy())
    raw_s, (_, raw) = timed(lambda: flat.search(query.numpy(), k), args.repeats)
    ours_torch = knn_index(database, "dot", "torch")
    ours_torch_s, (_, via_torch) = timed(lambda: ours_torch.search(query, k), args.repeats)
    ours_faiss = knn_index(database, "dot", "faiss")
    ours_faiss_s, (_, via_faiss) = timed(lambda: ours_faiss.search(query, k), args.repeats)
    identical = bool(torch.equal(exact, via_faiss) and torch.equal(exact, via_torch))
    raw_recall = knn_recall(torch.from_numpy(raw), exact)
    print(f"ours exact ({ours.choose(len(query), args.dim):5})       {ours_s:7.2f} s")
    print(f"ours exact (torch)        {ours_torch_s:7.2f} s")
    print(f"ours exact (faiss flat)   {ours_faiss_s:7.2f} s   identical rankings (all three): {identical}")
    print(
        f"raw faiss IndexFlatIP     {raw_s:7.2f} s   recall@{k} vs ours {raw_recall:.6f} (float32 near-ties)"
    )
    out = {
        "benchmark": "knn",
        "queries": args.queries,
        "database": args.database,
        "dim": args.dim,
        "k": k,
        "torch_threads": torch.get_num_threads(),
        "ours_exact_backend": ours.choose(len(query), args.dim),
        "ours_exact_seconds": round(ours_s, 3),
        "ours_torch_seconds": round(ours_torch_s, 3),
        "ours_faiss_flat_seconds": round(ours_faiss_s, 3),
        "faiss_flat_ip_seconds": round(raw_s, 3),
        "ours_vs_faiss_flat_ratio": round(raw_s / ours_s, 3),
        "exact_backends_identical": identical,
        "faiss_flat_recall": raw_recall,
    }
    for backend, options in (
        ("faiss-ivf", {"nprobe": args.nprobe}),
        ("faiss-hnsw", {"ef_search": args.ef_search}),
    ):
        build_s, index = timed(
            lambda backend=backend, options=options: knn_index(database, "dot", backend, **options)
        )
        search_s, (_, found) = timed(lambda index=index: index.search(query, k), args.repeats)
        recall = knn_recall(found, exact)
        name = backend.removeprefix("faiss-")
        print(
            f"{backend:25} {search_s:7.2f} s   recall@{k} {recall:.4f}   speed-up vs faiss flat "
            f"{raw_s / search_s:.1f}x   (build {build_s:.1f} s)"
        )
        out.update(
            {
                f"{name}_seconds": round(search_s, 3),
                f"{name}_build_seconds": round(build_s, 3),
                f"{name}_recall@{k}": round(recall, 5),
                f"{name}_speedup_vs_faiss_flat": round(raw_s / search_s, 2),
                f"{name}_speedup_vs_ours_exact": round(ours_s / search_s, 2),
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
