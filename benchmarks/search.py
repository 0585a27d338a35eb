"""Image search: indexing throughput (images/s through ``index``'s route, ``inference.embed_dataset``) and
search latency p50/p95 of ``SearchIndex.search_vectors`` + result paths vs faiss ``IndexFlatIP.search``
directly, on a synthetic index of ``--database`` unit vectors (one query at a time, as the CLI and web
page search).

Prints the measurements, then one JSON line (``ratio_p95`` = ours / faiss; goal <= 1.10).

    .venv/bin/python benchmarks/search.py [--images 256] [--database 100000] [--dim 128] [--queries 500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.cli import instantiate_module

from cbir_lightning.models import SiameseModule
from cbir_lightning.search.index import build_index, write_faiss
from cbir_lightning.search.manifest import EMBEDDINGS, FAISS_INDEX, FORMAT_VERSION, MANIFEST, publish
from cbir_lightning.search.query import SearchIndex


def tiny_checkpoint(path: Path, image_size: int = 28) -> Path:
    """An untrained Koch-net checkpoint in the layout ``cbir-lightning fit`` writes (module + DataModule)."""
    hparams = {
        "_class_path": "cbir_lightning.models.SiameseModule",
        "net": {
            "class_path": "cbir_lightning.models.KochSiameseNet",
            "init_args": {
                "input_size": image_size,
                "channels": [8, 8, 8, 8],
                "kernel_sizes": [3, 3, 3, 3],
                "padding": 1,
                "batch_norm": True,
                "embedding_dim": 32,
            },
        },
    }
    module = instantiate_module(SiameseModule, dict(hparams))
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {**hparams, "_instantiator": "pytorch_lightning.cli.instantiate_module"},
            "hparams_name": "kwargs",
            "datamodule_hyper_parameters": {
                "_class_path": "data_modules.OmniglotDataModule",
                "image_size": image_size,
            },
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


def indexing_rate(work: Path, count: int) -> dict:
    rng = np.random.default_rng(0)
    images = work / "images"
    images.mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (105, 105), dtype=np.uint8)).save(images / f"{i:05d}.png")
    ckpt = tiny_checkpoint(work / "tiny.ckpt")
    options = {"accelerator": "cpu", "enable_progress_bar": False}
    start = time.perf_counter()
    build_index(ckpt, images, work / "idx", batch_size=64, trainer_options=options)
    first = time.perf_counter() - start
    start = time.perf_counter()
    build_index(ckpt, images, work / "idx", batch_size=64, trainer_options=options)
    again = time.perf_counter() - start
    return {"index_images_per_s": count / first, "reindex_unchanged_s": again, "index_s": first}


def synthetic_index(folder: Path, n: int, dim: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(1000, dim, generator=g)
    vectors = F.normalize(
        centres[torch.randint(0, 1000, (n,), generator=g)] + torch.randn(n, dim, generator=g), dim=1
    )
    vectors = vectors.numpy()
    folder.mkdir()
    version = folder / "v-bench"
    version.mkdir()
    np.save(version / EMBEDDINGS, vectors)
    write_faiss(vectors, version / FAISS_INDEX)
    items = [{"path": f"img/{i:06d}.jpg", "size": 0, "mtime_ns": 0, "sha256": ""} for i in range(n)]
    manifest = {
        "format_version": FORMAT_VERSION,
        "images_root": "/data",
        "model": {},
        "whitening": None,
        "dimension": dim,
        "scoring": "dot",
        "count": n,
        "items": items,
        "skipped": [],
    }
    (version / MANIFEST).write_text(json.dumps(manifest))
    publish(folder, version)
    return vectors


def latencies(work: Path, n: int, dim: int, queries: int, k: int, seed: int) -> dict:
    vectors = synthetic_index(work / "big", n, dim, seed)
    ours = SearchIndex.open(work / "big")
    raw = faiss.read_index(str(work / "big" / "v-bench" / FAISS_INDEX))
    rng = np.random.default_rng(seed + 1)
    picks = vectors[rng.integers(0, n, queries)] + 0.1 * rng.standard_normal((queries, dim)).astype(
        np.float32
    )
    picks /= np.linalg.norm(picks, axis=1, keepdims=True)
    times = {"ours": [], "faiss": []}
    for i, q in enumerate(picks):  # interleaved, alternating order: same machine state for both
        q = q[None].astype(np.float32)
        order = ("ours", "faiss") if i % 2 else ("faiss", "ours")
        for name in order:
            start = time.perf_counter()
            if name == "ours":
                scores, rows = ours.search_vectors(q, k)
                ours.results(scores[0], rows[0])
            else:
                raw.search(q, k)
            times[name].append(time.perf_counter() - start)
    s_ours, r_ours = ours.search_vectors(picks[:5], k)
    s_raw, r_raw = raw.search(picks[:5].astype(np.float32), k)
    assert np.array_equal(r_ours, r_raw), "ours and faiss disagree"
    out = {}
    for name, values in times.items():
        out[f"{name}_p50_ms"] = float(np.percentile(values, 50) * 1e3)
        out[f"{name}_p95_ms"] = float(np.percentile(values, 95) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--database", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"benchmark": "search", "images": args.images, "database": args.database, "dim": args.dim}
        result.update(indexing_rate(work, args.images))
        print(f"indexing: {result['index_images_per_s']:.1f} images/s ({args.images} 105 px PNGs, Koch net)")
        result.update(latencies(work, args.database, args.dim, args.queries, args.k, args.seed))
    result["ratio_p95"] = result["ours_p95_ms"] / result["faiss_p95_ms"]
    result["ratio_p50"] = result["ours_p50_ms"] / result["faiss_p50_ms"]
    print(
        f"search over {args.database} x {args.dim}: ours p50 {result['ours_p50_ms']:.3f} ms, "
        f"p95 {result['ours_p95_ms']:.3f} ms; faiss p50 {result['faiss_p50_ms']:.3f} ms, "
        f"p95 {result['faiss_p95_ms']:.3f} ms; p95 ratio {result['ratio_p95']:.3f}"
    )
    print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in result.items()}))


if __name__ == "__main__":
    main()
