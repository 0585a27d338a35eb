"""Generate small databases in the exact release formats from the real photos in ../shared/data/landmarks.

* :func:`make_sfm_release`: ``retrieval-SfM-120k.pkl`` + ``ims/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid`` (JPEG, no
  suffix). Sacre Coeur's 10 photos are one cluster; each Oxford photo's random crops/flips are one cluster.
* :func:`make_revisited_layout`: ``jpg/<name>.jpg`` + ``gnd_roxford5k.pkl`` restricted to the 10 Oxford
  photos.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from helpers.paths import SHARED_DATA

LANDMARKS = SHARED_DATA / "landmarks"
OXFORD = sorted((LANDMARKS / "oxford5k_images").glob("*.jpg"))
SACRE_COEUR = sorted((LANDMARKS / "sacre_coeur").glob("*.jpg"))


def cid_path(ims: Path, cid: str) -> Path:
    return ims / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid


def _small(image: Image.Image, size: int) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def _crop(image: Image.Image, rng: random.Random, size: int) -> Image.Image:
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.6, 0.9)), int(h * rng.uniform(0.6, 0.9))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = image.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return _small(out, size)


def sfm_clusters(crops_per_photo: int = 3, size: int = 64, seed: int = 0) -> list[list[Image.Image]]:
    """Cluster 0: the Sacre Coeur photos; then one cluster of crops per Oxford photo."""
    rng = random.Random(seed)
    clusters = [[_small(Image.open(p), size) for p in SACRE_COEUR]]
    for path in OXFORD:
        with Image.open(path) as photo:
            photo = _small(photo, 4 * size)
            clusters.append([_crop(photo, rng, size) for _ in range(crops_per_photo)])
    return clusters


def _split(clusters: list[list[Image.Image]], ids: list[int], ims: Path, rng: random.Random) -> dict:
    items = [(cid_id, img) for cid_id, cluster in zip(ids, clusters, strict=True) for img in cluster]
    rng.shuffle(items)  # images of a cluster are not contiguous in the release either
    cids, cluster_of = [], []
    for cluster_id, image in items:
        cid = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        path = cid_path(ims, cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            image.save(f, "JPEG", quality=90)
        cids.append(cid)
        cluster_of.append(cluster_id)
    qidxs, pidxs = [], []
    for i in range(len(cids)):
        for j in range(len(cids)):
            if i != j and cluster_of[i] == cluster_of[j] and rng.random() < 0.5:
                qidxs.append(i)
                pidxs.append(j)
    return {"cids": cids, "cluster": cluster_of, "qidxs": qidxs, "pidxs": pidxs}


def make_sfm_release(
    root: Path, crops_per_photo: int = 3, size: int = 64, val_clusters: int = 3, seed: int = 0
) -> Path:
    """Write ``root/retrieval-SfM-120k.pkl`` and ``root/ims/``; the last ``val_clusters`` Oxford clusters
    form the ``val`` split. Cluster ids are non-contiguous. Returns ``root``."""
    rng = random.Random(seed)
    clusters = sfm_clusters(crops_per_photo, size, seed)
    ids = [7 * i + 3 for i in range(len(clusters))]
    cut = len(clusters) - val_clusters
    ims = root / "ims"
    db = {
        "train": _split(clusters[:cut], ids[:cut], ims, rng),
        "val": _split(clusters[cut:], ids[cut:], ims, rng),
    }
    with (root / "retrieval-SfM-120k.pkl").open("wb") as f:
        pickle.dump(db, f, protocol=2)
    return root


# Tiny revisited Oxford: two real queries (with their real bbx), the other 8 photos as the database.
QUERIES = ("pitt_rivers_000058", "radcliffe_camera_000523")
GND = {
    "pitt_rivers_000058": {
        "easy": ["pitt_rivers_000033", "pitt_rivers_000087"],
        "hard": ["pitt_rivers_000119"],
        "junk": ["pitt_rivers_000153"],
    },
    "radcliffe_camera_000523": {
        "easy": ["radcliffe_camera_000095"],
        "hard": ["radcliffe_camera_000519"],
        "junk": [],
    },
}


def make_revisited_layout(root: Path, size: int = 96) -> dict:
    """``root/jpg/*.jpg`` (photos shrunk to ``size``, boxes scaled alike) and ``root/gnd_roxford5k.pkl``."""
    with (LANDMARKS / "gnd" / "gnd_roxford5k.pkl").open("rb") as f:
        real = pickle.load(f, encoding="latin1")
    (root / "jpg").mkdir(parents=True, exist_ok=True)
    scales = {}
    for path in OXFORD:
        with Image.open(path) as photo:
            small = _small(photo, size)
            scales[path.stem] = small.width / photo.width
            small.save(root / "jpg" / f"{path.stem}.jpg", quality=95)
    imlist = [p.stem for p in OXFORD if p.stem not in QUERIES]
    gnd = []
    for name in QUERIES:
        bbx = real["gnd"][real["qimlist"].index(name)]["bbx"]
        entry = {
            key: np.array([imlist.index(n) for n in names], dtype=np.int64)
            for key, names in GND[name].items()
        }
        entry["bbx"] = [float(v) * scales[name] for v in bbx]
        gnd.append(entry)
    data = {"imlist": imlist, "qimlist": list(QUERIES), "gnd": gnd}
    with (root / "gnd_roxford5k.pkl").open("wb") as f:
        pickle.dump(data, f, protocol=4)
    return data
