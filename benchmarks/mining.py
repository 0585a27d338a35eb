"""One hard-negative mining epoch: SfMPairsDataModule.mine vs a faithful re-implementation of cirtorch's
``TuplesDataset.create_epoch_tuples`` (query set and pool embedded one image at a time through a
batch-size-1 DataLoader, dot-product sort of the whole pool, a Python loop over the ranks per query).

Both run in this process on the same synthetic database written in the retrieval-SfM-120k format (JPEG
files under ims/, pkl), with the same model (GeM ResNet-18, random weights) and the same draws of pairs
and pool (cirtorch draws them from the global RNG; here both use ``draw_epoch(seed, epoch)``).
Prints both times, whether the tuples are identical, then one JSON line.

    .venv/bin/python benchmarks/mining.py [--images 400] [--clusters 40] [--query-size 100] [--pool-size 300]
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbir_lightning.models import GeMSiameseModule
from data_modules.sampling.mining import draw_epoch
from data_modules.sfm import SfMPairsDataModule
from data_modules.sfm.files import cid_path
from data_modules.transforms.photos import PhotoTransform, load_photo


def write_database(root: Path, images: int, clusters: int, seed: int) -> None:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    colours = nrng.integers(0, 256, (clusters, 3))
    cids, cluster = [], []
    for i in range(images):
        c = i % clusters
        size = (80, 60) if i % 3 else (60, 80)
        pixels = np.clip(colours[c] + nrng.normal(0, 60, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        cid = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        path = cid_path(root / "ims", cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            Image.fromarray(pixels).save(f, "JPEG", quality=90)
        cids.append(cid)
        cluster.append(c)
    qidxs = [i for i in range(images)]
    pidxs = [(i + clusters) % images if (i + clusters) < images else i - clusters for i in range(images)]
    split = {"cids": cids, "cluster": cluster, "qidxs": qidxs, "pidxs": pidxs}
    with (root / "retrieval-SfM-120k.pkl").open("wb") as f:
        pickle.dump({"train": split, "val": split}, f)


class ImagesFromList(torch.utils.data.Dataset):
    """cirtorch's ImagesFromList: load, thumbnail to imsize, transform (here: PhotoTransform)."""

    def __init__(self, images, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(load_photo(self.images[i]))


def cirtorch_epoch(
    net, paths, clusters, qpool, ppool, transform, query_size, pool_size, nnum, seed, epoch, workers
):
    """create_epoch_tuples, transcribed (device moves dropped: CPU; draws from draw_epoch)."""
    idxs2qpool, idxs2images = draw_epoch(len(qpool), len(paths), query_size, pool_size, seed, epoch)
    qidxs = [qpool[i] for i in idxs2qpool]
    pidxs = [ppool[i] for i in idxs2qpool]
    net.eval()
    with torch.no_grad():
        loader = torch.utils.data.DataLoader(
            ImagesFromList([paths[i] for i in qidxs], transform),
            batch_size=1,
            shuffle=False,
            num_workers=workers,
        )
        qvecs = None
        for i, input in enumerate(loader):
            v = net.descriptor(input).data.squeeze()
            qvecs = torch.zeros(len(v), len(qidxs)) if qvecs is None else qvecs
            qvecs[:, i] = v
        loader = torch.utils.data.DataLoader(
            ImagesFromList([paths[i] for i in idxs2images], transform),
            batch_size=1,
            shuffle=False,
            num_workers=workers,
        )
        poolvecs = torch.zeros(len(qvecs), len(idxs2images))
        for i, input in enumerate(loader):
            poolvecs[:, i] = net.descriptor(input).data.squeeze()
        scores = torch.mm(poolvecs.t(), qvecs)
        scores, ranks = torch.sort(scores, dim=0, descending=True)
        avg_ndist, n_ndist = torch.tensor(0).float(), torch.tensor(0).float()
        nidxs = []
        for q in range(len(qidxs)):
            qcluster = clusters[qidxs[q]]
            cl = [qcluster]
            nid = []
            r = 0
            while len(nid) < nnum:
                potential = idxs2images[ranks[r, q]]
                if clusters[potential] not in cl:
                    nid.append(potential)
                    cl.append(clusters[potential])
                    avg_ndist += torch.pow(qvecs[:, q] - poolvecs[:, ranks[r, q]] + 1e-6, 2).sum(dim=0).sqrt()
                    n_ndist += 1
                r += 1
            nidxs.append(nid)
    tuples = torch.tensor(
        [[q, p, *[int(n) for n in ns]] for q, p, ns in zip(qidxs, pidxs, nidxs, strict=True)]
    )
    return tuples, float(avg_ndist / n_ndist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--clusters", type=int, default=40)
    parser.add_argument("--query-size", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=300)
    parser.add_argument("--neg-num", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    net = GeMSiameseModule(backbone="resnet18", weights=None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_database(root, args.images, args.clusters, args.seed)
        dm = SfMPairsDataModule(
            root=root,
            image_size=args.image_size,
            neg_num=args.neg_num,
            query_size=args.query_size,
            pool_size=args.pool_size,
            mining_batch_size=64,
            num_workers=args.workers,
            seed=args.seed,
        )
        dm.setup()
        split = dm.train_split
        start = time.perf_counter()
        ours = dm.mine(net, epoch=1)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        ref, ref_dist = cirtorch_epoch(
            net,
            split.paths,
            split.clusters.tolist(),
            split.qidxs.tolist(),
            split.pidxs.tolist(),
            PhotoTransform(args.image_size),
            args.query_size,
            args.pool_size,
            args.neg_num,
            args.seed,
            1,
            args.workers,
        )
        ref_s = time.perf_counter() - start
    identical = bool(torch.equal(ours, ref))
    same_rows = float((ours == ref).all(1).float().mean())
    print(f"ours (DataModule.mine): {ours_s:.2f} s, neg distance {dm.last_neg_distance:.4f}")
    print(f"cirtorch loop:          {ref_s:.2f} s, neg distance {ref_dist:.4f}")
    print(f"identical tuples: {identical} ({same_rows:.1%} of rows)")
    print(
        json.dumps(
            {
                "benchmark": "mining",
                "images": args.images,
                "query_size": args.query_size,
                "pool_size": args.pool_size,
                "neg_num": args.neg_num,
                "image_size": args.image_size,
                "ours_s": float(f"{ours_s:.6g}"),
                "cirtorch_s": float(f"{ref_s:.6g}"),
                "ratio": round(ours_s / ref_s, 4),
                "identical_tuples": identical,
                "identical_rows": same_rows,
            }
        )
    )


if __name__ == "__main__":
    main()
