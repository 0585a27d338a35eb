"""How much each re-ranking (alpha-QE, DBA, diffusion) changes mAP on a landmark ground truth.

Descriptors are SYNTHETIC (the photos are not available here), drawn to follow the ground truth by
:func:`data_modules.landmarks.synthetic.synthetic_descriptors`: every landmark (queries sharing positives)
has a random centre; easy positives are the centre plus small noise, hard positives plus more noise,
everything else is random. They are scored by ``cbir-lightning evaluate --gnd ... --rerank ...`` code
(revisitop protocol). Prints one JSON line last.

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
from data_modules.landmarks.synthetic import synthetic_descriptors


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
    queries, database = synthetic_descriptors(
        truth.gnd, len(truth.imlist), args.dim, args.easy_noise, args.hard_noise, args.seed
    )
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
