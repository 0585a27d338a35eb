"""Embedding throughput: ONNX Runtime (CPU) vs PyTorch for the same embedder, batch and threads, one process.

    python benchmarks/onnx_throughput.py --ckpt CKPT   # a checkpoint's embedder (as `export` writes it)
    python benchmarks/onnx_throughput.py --backbone resnet50 --size 224 --scales "[1, 0.7071, 0.5]"

Without ``--ckpt`` a GeM model is built directly (no pretrained weights: speed does not depend on them).
Inputs are random preprocessed images ``[batch, C, H, W]``; both runtimes embed the same ``--images`` in
batches of ``--batch-size`` with ``--threads`` intra-op threads, in ``--repeats`` alternating rounds after
one warm-up (a busy machine slows both alike). Prints the best images/s of each, ``ratio`` = ONNX / PyTorch
images/s (also per round) and the max abs difference of the vectors, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import timed  # noqa: E402


def embedder_from_args(args):
    """``(embedder nn.Module in eval mode, input shape [C, H, W], name, onnx file or None)``."""
    from cbir_lightning.export.onnx_export import ExportedEmbedder

    if args.ckpt:
        from cbir_lightning.checkpoints import load_module
        from cbir_lightning.export.onnx_export import export_onnx, is_dsh
        from cbir_lightning.whitening import load_whitening, whitening_path

        out = Path(args.workdir) / "model.onnx"
        result = export_onnx(args.ckpt, out)
        wfile = whitening_path(Path(args.ckpt))
        whitening = load_whitening(wfile) if wfile.is_file() else None
        module = load_module(args.ckpt)
        size = result["input_size"] if isinstance(result["input_size"], list) else [args.size, args.size]
        shape = (result["channels"], *size)
        return ExportedEmbedder(module, whitening, is_dsh(module)).eval(), shape, Path(args.ckpt).name, out
    from cbir_lightning.models.gem_module import GeMSiameseModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = GeMSiameseModule(backbone=args.backbone, weights=None, eval_scales=args.scales).eval()
    return ExportedEmbedder(module, None).eval(), (3, args.size, args.size), f"gem_{args.backbone}", None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="checkpoint of `cbir-lightning fit` (else a GeM model is built)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224, help="input side (GeM without --ckpt)")
    parser.add_argument("--scales", type=json.loads, default=[1.0], help='eval scales, e.g. "[1, 0.7071]"')
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime as ort

    from cbir_lightning.export.onnx_export import export_graph

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        embedder, shape, name, onnx_file = embedder_from_args(args)
        if onnx_file is None:
            onnx_file = Path(workdir) / "model.onnx"
            export_graph(embedder, torch.rand(2, *shape), onnx_file)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        images = torch.rand(args.images, *shape, generator=torch.Generator().manual_seed(0))
        batches = list(torch.split(images, args.batch_size))
        numpy_batches = [b.numpy() for b in batches]

        def run_torch() -> torch.Tensor:
            with torch.inference_mode():
                return torch.cat([embedder(b) for b in batches])

        def run_onnx() -> torch.Tensor:
            return torch.cat([torch.from_numpy(session.run(None, {"images": b})[0]) for b in numpy_batches])

        run_torch(), run_onnx()  # warm-up (oneDNN primitives, ORT arena)
        rounds = []  # alternating rounds, so a busy machine slows both alike
        for _ in range(args.repeats):
            torch_s, torch_out = timed(run_torch)
            onnx_s, onnx_out = timed(run_onnx)
            rounds.append((torch_s, onnx_s))
    torch_s, onnx_s = min(t for t, _ in rounds), min(o for _, o in rounds)
    result = {
        "benchmark": "onnx_throughput",
        "model": name,
        "input": list(shape),
        "images": args.images,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "torch_images_per_s": round(args.images / torch_s, 2),
        "onnx_images_per_s": round(args.images / onnx_s, 2),
        "ratio": round(torch_s / onnx_s, 3),
        "round_ratios": [round(t / o, 3) for t, o in rounds],
        "max_abs_diff": float((onnx_out - torch_out.float()).abs().max()),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    print(
        f"{name} {list(shape)} batch {args.batch_size}, {args.threads} threads: PyTorch "
        f"{result['torch_images_per_s']} images/s, ONNX Runtime {result['onnx_images_per_s']} images/s "
        f"(x{result['ratio']}), max abs diff {result['max_abs_diff']:.2g}"
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
