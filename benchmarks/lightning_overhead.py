"""Lightning overhead: the demo's Koch net and Omniglot class batches trained N steps by the Lightning
Trainer and by a plain PyTorch loop, both in each of a few processes, in alternating order, on the same
data.

Prints pairs/s of each (every ordered pair inside a class batch counts) and their ratio, then one JSON
line. Goal: ratio (Lightning / plain) >= 0.95. ``ratio`` is the median over the paired (Lightning, plain)
rounds, so one disturbed round cannot decide it; ``best_ratio`` compares the fastest run of each.

Each of ``--processes`` fresh processes runs ``--repeats`` rounds of both loops, in alternating order.
On this 2-core VM the speed of the same code differs by up to ±10% from one process to the next (a
per-process effect: within one process one loop may stay ahead in every round), so a single process
can show 0.88 or 1.08 for the same code; several processes even that out.

    .venv/bin/python benchmarks/lightning_overhead.py [--steps 60] [--repeats 3] [--processes 3] [--root DIR]

``--root`` defaults to ``data/omniglot`` (filled by ``make data``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from cbir_lightning.losses.pair_bce import all_pairs_bce
from cbir_lightning.models import KochSiameseNet, SiameseModule
from data_modules import OmniglotDataModule


def make_net(size: int) -> KochSiameseNet:
    torch.manual_seed(0)
    return KochSiameseNet(
        input_size=size,
        channels=[64] * 4,
        kernel_sizes=[3] * 4,
        padding=1,
        batch_norm=True,
        embedding_dim=256,
        head_init="negative_l1",
    )


def adam(params):
    return torch.optim.Adam(params, lr=2e-3)


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def lightning_seconds(dm, size: int, steps: int, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(SiameseModule(make_net(size), optimizer=adam), train_dataloaders=dm.train_dataloader())
    return timer.end - timer.start


def plain_seconds(dm, size: int, steps: int, warmup: int) -> float:
    net = make_net(size)
    optimizer = adam(net.parameters())
    net.train()
    start = None
    for i, (images, labels) in enumerate(dm.train_dataloader()):
        if i == warmup:
            start = time.perf_counter()
        embeddings = net.embed(images)
        loss = all_pairs_bce(net.similarity(embeddings, embeddings), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i + 1 == steps + warmup:
            break
    return time.perf_counter() - start


def rounds(args) -> tuple[list[float], list[float], int]:
    """Pairs/s of each Lightning and plain run of ``args.repeats`` rounds in this process, and the batch."""
    dm = OmniglotDataModule(
        root=args.root, image_size=args.image_size, epoch_length=args.steps + args.warmup, num_workers=0
    )
    dm.setup("fit")
    batch = dm.hparams.classes_per_batch * dm.hparams.samples_per_class
    pairs = batch * (batch - 1) * args.steps
    ours, plain = [], []
    for i in range(args.repeats):
        # alternate the order (L P, P L, ...) so drift in machine speed within a round hits both alike
        for run in ("lightning", "plain") if i % 2 == 0 else ("plain", "lightning"):
            if run == "lightning":
                ours.append(pairs / lightning_seconds(dm, args.image_size, args.steps, args.warmup))
            else:
                plain.append(pairs / plain_seconds(dm, args.image_size, args.steps, args.warmup))
    return ours, plain, batch


def rounds_in_processes(args) -> tuple[list[float], list[float], int]:
    """The rounds of ``args.processes`` fresh processes (each runs both loops), concatenated."""
    ours, plain, batch = [], [], 0
    for _ in range(args.processes):
        command = [sys.executable, __file__, *sys.argv[1:], "--processes", "1"]  # the last one counts
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark process failed:\n{proc.stderr[-2000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        ours += result["rounds_lightning"]
        plain += result["rounds_plain"]
        batch = result["batch"]
    return ours, plain, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds per process")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes, each running --repeats")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "data/omniglot"))
    parser.add_argument("--image-size", type=int, default=28)
    args = parser.parse_args()
    ours, plain, batch = rounds(args) if args.processes == 1 else rounds_in_processes(args)
    best_ours, best_plain = max(ours), max(plain)
    median_ratio = statistics.median(o / p for o, p in zip(ours, plain, strict=True))
    print(f"Lightning Trainer: {best_ours:,.0f} pairs/s ({best_ours / (batch - 1):,.1f} images/s)")
    print(f"plain PyTorch:     {best_plain:,.0f} pairs/s ({best_plain / (batch - 1):,.1f} images/s)")
    print(f"ratio Lightning/plain: {median_ratio:.3f} (median of rounds, best {best_ours / best_plain:.3f})")
    print(
        json.dumps(
            {
                "benchmark": "lightning_overhead",
                "lightning_pairs_per_s": round(best_ours, 1),
                "plain_pairs_per_s": round(best_plain, 1),
                "ratio": round(median_ratio, 4),
                "best_ratio": round(best_ours / best_plain, 4),
                "rounds_lightning": [round(x, 1) for x in ours],
                "rounds_plain": [round(x, 1) for x in plain],
                "steps": args.steps,
                "batch": batch,
                "repeats": args.repeats,
                "processes": args.processes,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
