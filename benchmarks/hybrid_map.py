"""Image-only vs text-only vs hybrid search on the public-domain paintings, relevance = same artist.

The paintings are indexed into a Milvus Lite store (``Index.build(..., "milvus:...", metadata=...)``) with
their ``title`` (words of the file name, ``paintings_metadata.py``) as the text column. Every painting is a
query against all the others: image-only (its own vector), text-only (its title words, BM25), hybrid
(both, reciprocal rank fusion, ``search(query, text=..., text_weight=w)`` for each ``--weights`` w). mAP@K:
average precision of the first ``--depth`` results (the query itself removed), divided by the number of
other paintings by that artist (capped at the depth). Prints one JSON line per method.

    .venv/bin/python benchmarks/hybrid_map.py --config configs/wikiart_pretrained.yaml \\
        [--root data/wikiart_pd] [--weights 0.5 1 2] [--every 2] [--db paintings.db]

``--root`` defaults to ``data/wikiart_pd``, the copy ``make data`` makes of the shared paintings.

The queries' vectors are read back from the store (what embedding the paintings again gives); ``--db`` keeps
the store, and a re-run with the same ``--ckpt`` reuses its vectors (the index is incremental).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from paintings_metadata import painting_rows, write_tsv

from cbir_lightning import Index
from cbir_lightning.metrics.retrieval import average_precision


def ap_at(found: list[str], query: str, artist_of: dict[str, str], depth: int) -> float:
    """AP of ``found`` (paths, best first) without ``query``, over its first ``depth``."""
    ranked = [p for p in found if p != query][:depth]
    relevant = torch.tensor(
        [[artist_of[p] == artist_of[query] for p in ranked] + [False] * (depth - len(ranked))]
    )
    others = sum(1 for p, a in artist_of.items() if a == artist_of[query] and p != query)
    return float(average_precision(relevant, torch.tensor([min(others, depth)]))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paintings = Path(__file__).resolve().parents[1] / "data" / "wikiart_pd"  # `make data`'s copy
    parser.add_argument("--root", type=Path, default=paintings)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--ckpt", help="a checkpoint or model file with dot-product vectors")
    model.add_argument("--config", help="a fit config whose model is used with its own weights")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--every", type=int, default=1, help="every N-th painting is a query (1: all)")
    parser.add_argument("--offset", type=int, default=0, help="the first query (with --every: a split)")
    parser.add_argument("--db", type=Path, help="keep the store there (a re-run reuses its vectors)")
    args = parser.parse_args()
    ckpt = args.ckpt
    if args.config:
        from cbir_lightning.cli.lightning_cli import config_checkpoint

        ckpt = str(config_checkpoint(args.config, overrides=["--data.init_args.root", str(args.root)]))
    rows = painting_rows(args.root)
    artist_of = {str(args.root.resolve() / r["path"]): r["artist"] for r in rows}
    work = Path(tempfile.mkdtemp(prefix="hybrid-map-"))
    db = args.db or work / "paintings.db"
    try:
        start = time.perf_counter()
        index = Index.build(
            args.root,
            f"milvus:{db}",
            ckpt,
            metadata=write_tsv(rows, work / "paintings.tsv"),
            text_columns=["title"],
            trainer_options={"accelerator": "cpu", "enable_progress_bar": False},
        )
        build_s = time.perf_counter() - start
        index = Index.open(index.path)
        queries = rows[args.offset :: args.every]
        store = index.searcher  # the stored vectors are the query vectors (what embedding them again gives)
        vectors = {
            str(args.root.resolve() / r["path"]): torch.tensor([r["vector"]])
            for r in store.rows([q["path"] for q in queries], ["path", "vector"])
        }
        scores: dict[str, list[float]] = {
            "image": [],
            "text": [],
            **{f"hybrid_w{w:g}": [] for w in args.weights},
        }
        for row in queries:
            path = str(args.root.resolve() / row["path"])
            if len(scores["image"]) % 50 == 0:
                print(f"{len(scores['image'])}/{len(queries)} queries", file=sys.stderr, flush=True)
            n = args.depth + 1
            image = [r.path for r in index.search(vectors[path], n)]
            scores["image"].append(ap_at(image, path, artist_of, args.depth))
            text = [r.path for r in index.search(text=row["title"], k=n)] if row["title"] else []
            scores["text"].append(ap_at(text, path, artist_of, args.depth))
            for w in args.weights:
                found = index.search(vectors[path], n, text=row["title"] or None, text_weight=w)
                scores[f"hybrid_w{w:g}"].append(ap_at([r.path for r in found], path, artist_of, args.depth))
        for method, values in scores.items():
            out = {"benchmark": "hybrid_map", "method": method, "queries": len(values), "depth": args.depth}
            out.update(
                {
                    "mAP": round(sum(values) / len(values), 4),
                    "paintings": len(rows),
                    "build_s": round(build_s, 1),
                }
            )
            print(json.dumps(out), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
