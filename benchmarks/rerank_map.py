"""How much each re-ranking (alpha-QE, DBA, diffusion) changes mAP on a landmark ground truth.

Descriptors are SYNTHETIC (the photos are not available here), drawn to follow the ground truth: every
landmark (queries sharing positives) has a random centre; easy positives are the centre plus small noise,
hard positives plus more noise, everything else is random. They are scored by ``cbir-lightning
evaluate --gnd ... --rerank ...`` code (revisitop protocol). Prints one JSON line last.

    .venv/bin/python benchmarks/rerank_map.py --gnd data/roxford5k/gnd_roxford5k.pkl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from cbir_lightning.cli.evaluate import evaluate
from cbir_lightning.rerank import RERANKERS
from data_modules.landmarks.gnd import load_gnd


def synthetic_descriptors(truth, dim: int, easy: float, hard: float, seed: int):
    rng = np.random.default_rng(seed)
    n, nq = len(truth.imlist), truth.num_queries
    parent = list(range(nq))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for q, g in enumerate(truth.gnd):
        positives = list(g.get("easy", g.get("ok", []))) + list(g.get("hard", []))
        for item in positives:
            if item in owner:
                parent[find(q)] = find(owner[item])
            else:
                owner[item] = q
    centres = {root: rng.standard_normal(dim) for root in {find(q) for q in range(nq)}}
    database = rng.standard_normal((n, dim))
    for q, g in enumerate(truth.gnd):
        centre = centres[find(q)]
        for item in g.get("easy", g.get("ok", [])):
            database[item] = centre + easy * rng.standard_normal(dim)
        for item in g.get("hard", []):
            database[item] = centre + hard * rng.standard_normal(dim)
    queries = np.stack([centres[find(q)] + easy * rng.standard_normal(dim) for q in range(nq)])
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(queries), unit(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gnd",
        default=str(Path(__file__).resolve().parents[1] / "data/roxford5k/gnd_roxford5k.pkl"),
        help="ground truth; `cbir-lightning download --dataset roxford5k --root data --images false` "
        "writes the default",
    )
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--easy-noise", type=float, default=1.2)
    parser.add_argument("--hard-noise", type=float, default=2.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    truth = load_gnd(args.gnd)
    queries, database = synthetic_descriptors(truth, args.dim, args.easy_noise, args.hard_noise, args.seed)
    result = {"benchmark": "rerank_map", "gnd": Path(args.gnd).name, "descriptors": "synthetic"}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "q.npy", queries)
        np.save(Path(tmp) / "x.npy", database)
        for name in RERANKERS:
            metrics = evaluate(queries=f"{tmp}/q.npy", database=f"{tmp}/x.npy", gnd=args.gnd, rerank=name)
            result[name] = (
                {p: round(v["mAP"], 4) for p, v in metrics.items()}
                if "mAP" not in metrics
                else {"mAP": round(metrics["mAP"], 4)}
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
