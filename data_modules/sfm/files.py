"""The ``retrieval-SfM-120k`` release (Radenović et al.): ``<root>/<name>.pkl`` and ``<root>/ims/``.

The pickle is ``{"train": split, "val": split}``; a split has ``cids`` (image names), ``cluster`` (the
3D model of each image), and ``qidxs`` / ``pidxs`` (matching query / positive image indices). Image
``cid`` is stored without a suffix at ``ims/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid`` (cirtorch's
``cid2filename``). The pickle is read with the restricted unpickler of :mod:`data_modules.landmarks.gnd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cbir_lightning.errors import CbirError
from data_modules.io.pickles import safe_load_pickle

SPLIT_KEYS = ("cids", "cluster", "qidxs", "pidxs")


def cid_path(ims_root: str | Path, cid: str) -> Path:
    """Where the release stores image ``cid``: ``ims/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid``."""
    return Path(ims_root) / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid


@dataclass
class SfMSplit:
    """One split: image files, their cluster ids and the (query, positive) pairs."""

    paths: list[Path]
    clusters: torch.Tensor  # [N] int64
    qidxs: torch.Tensor  # [P] int64, indices into paths
    pidxs: torch.Tensor  # [P]

    def __len__(self) -> int:
        return len(self.paths)


def _int_array(value, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise CbirError(f"{where} must be a list of integers") from err
    return array


def read_sfm_split(root: str | Path, split: str, name: str = "retrieval-SfM-120k", check_files: bool = True):
    """Read one split of ``<root>/<name>.pkl``, checking keys, lengths, indices, pairs and image files."""
    root = Path(root)
    pkl = root / f"{name}.pkl"
    if not pkl.is_file():
        raise CbirError(
            f"{pkl} not found; data.root must hold {name}.pkl and ims/ "
            "(the retrieval-SfM-120k release, see cirtorch's download_train)"
        )
    data = safe_load_pickle(pkl)
    if not isinstance(data, dict) or split not in data:
        raise CbirError(f"{pkl}: expected a dict with 'train' and 'val' splits; '{split}' is missing")
    part = data[split]
    missing = [key for key in SPLIT_KEYS if not isinstance(part, dict) or key not in part]
    if missing:
        raise CbirError(f"{pkl}: split '{split}' lacks key(s) {missing}; expected {list(SPLIT_KEYS)}")
    cids = [str(c) for c in part["cids"]]
    clusters = _int_array(part["cluster"], f"{pkl}: {split}['cluster']")
    qidxs = _int_array(part["qidxs"], f"{pkl}: {split}['qidxs']")
    pidxs = _int_array(part["pidxs"], f"{pkl}: {split}['pidxs']")
    where = f"{pkl}: split '{split}'"
    if len(clusters) != len(cids):
        raise CbirError(f"{where} has {len(cids)} cids but {len(clusters)} cluster ids")
    if len(qidxs) != len(pidxs):
        raise CbirError(f"{where} has {len(qidxs)} qidxs but {len(pidxs)} pidxs")
    for key, values in (("qidxs", qidxs), ("pidxs", pidxs)):
        if len(values) and (values.min() < 0 or values.max() >= len(cids)):
            raise CbirError(f"{where}: {key} has an index outside cids (0..{len(cids) - 1})")
    if len(qidxs):
        sizes = np.bincount(clusters - clusters.min())
        single = qidxs[sizes[clusters[qidxs] - clusters.min()] < 2]
        if len(single):
            q = int(single[0])
            raise CbirError(
                f"{where}: cluster {int(clusters[q])} of query image {q} ({cids[q]}) has a single image, "
                "so it has no positive; remove that query pair or add images to the cluster"
            )
        bad = np.flatnonzero((clusters[qidxs] != clusters[pidxs]) | (qidxs == pidxs))
        if len(bad):
            i = int(bad[0])
            raise CbirError(
                f"{where}: pair {i} (query {int(qidxs[i])}, positive {int(pidxs[i])}) is not two different "
                "images of one cluster; fix qidxs/pidxs"
            )
    ims = root / "ims"
    paths = [cid_path(ims, cid) for cid in cids]
    if check_files:
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise CbirError(
                f"{len(absent)} of {len(paths)} '{split}' images missing under {ims}, e.g. {absent[0]}; "
                "extract the release's ims/ tree into data.root "
                "(layout ims/cid[-2:]/cid[-4:-2]/cid[-6:-4]/cid)"
            )
    return SfMSplit(
        paths=paths,
        clusters=torch.from_numpy(clusters),
        qidxs=torch.from_numpy(qidxs),
        pidxs=torch.from_numpy(pidxs),
    )


def read_whitening_pairs(root: str | Path, name: str = "retrieval-SfM-120k"):
    """cirtorch's separate whitening set ``<root>/<name>-whiten.pkl`` (``cids``, ``qidxs``, ``pidxs``), or
    ``None`` if the release has none."""
    pkl = Path(root) / f"{name}-whiten.pkl"
    if not pkl.is_file():
        return None
    data = safe_load_pickle(pkl)
    missing = [key for key in ("cids", "qidxs", "pidxs") if not isinstance(data, dict) or key not in data]
    if missing:
        raise CbirError(f"{pkl}: lacks key(s) {missing}; expected cids, qidxs, pidxs (or delete the file)")
    cids = [str(c) for c in data["cids"]]
    q, p = _int_array(data["qidxs"], f"{pkl}: qidxs"), _int_array(data["pidxs"], f"{pkl}: pidxs")
    if len(q) != len(p) or (len(q) and (min(q.min(), p.min()) < 0 or max(q.max(), p.max()) >= len(cids))):
        raise CbirError(f"{pkl}: qidxs/pidxs differ in length or index outside cids; download it again")
    ims = Path(root) / "ims"
    return [cid_path(ims, cid) for cid in cids], torch.from_numpy(np.stack([q, p], 1))
