"""SfMPairsDataModule on a generated database in the exact retrieval-SfM-120k format, and bad input (the
CLI runs: tests/integration/test_sfm.py)."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from PIL import Image

from cbir_lightning.errors import CbirError
from data_modules.sfm import SfMPairsDataModule
from data_modules.transforms.photos import load_photo

SMALL = dict(image_size=40, neg_num=2, query_size=8, pool_size=20, batch_size=4, num_workers=0)


def copy_release(release, tmp_path, edit=None):
    root = tmp_path / "db"
    shutil.copytree(release, root)
    if edit is not None:
        path = root / "retrieval-SfM-120k.pkl"
        with path.open("rb") as f:
            db = pickle.load(f)
        edit(db)
        with path.open("wb") as f:
            pickle.dump(db, f)
    return root


def test_reads_the_release_layout(release):
    with (release / "retrieval-SfM-120k.pkl").open("rb") as f:
        db = pickle.load(f)
    dm = SfMPairsDataModule(root=release, **SMALL)
    dm.setup()
    train = db["train"]
    assert len(dm.train_split) == len(train["cids"]) == 31 and len(dm.val_split) == 9
    cid = train["cids"][4]
    assert dm.train_split.paths[4] == release / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid
    assert dm.train_split.clusters.tolist() == train["cluster"]
    assert torch.equal(dm.train_split.qidxs, torch.tensor(train["qidxs"]))
    # eval_transform gives the validation loader's tensor; longer side = image_size, ImageNet-normalised
    dm_val = SfMPairsDataModule(root=release, **SMALL)
    dm_val.setup()
    image, label, index = next(iter(dm_val.val_dataloader()))
    expected = dm_val.eval_transform(Image.open(dm_val.val_split.paths[0]))
    assert torch.equal(image[0], expected) and max(expected.shape[1:]) == 40
    assert int(label) == db["val"]["cluster"][0] and int(index) == 0
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    raw = load_photo(dm_val.val_split.paths[0])
    raw.thumbnail((40, 40), Image.Resampling.LANCZOS)
    ref = (torch.tensor(list(raw.getdata()), dtype=torch.float32) / 255 - mean) / std
    assert torch.allclose(expected.permute(1, 2, 0).reshape(-1, 3), ref, atol=1e-5)


def test_tuple_batches_and_whitening_data(release):
    dm = SfMPairsDataModule(root=release, **SMALL)
    dm.setup()
    model = torch.nn.Sequential()
    model.embed = model.descriptor = lambda x: torch.nn.functional.normalize(x.mean((2, 3)), dim=1)
    dm.trainer = type(
        "T",
        (),
        {
            "current_epoch": 0,
            "lightning_module": model,
            "is_global_zero": True,
            "loggers": [],
            "global_step": 0,
        },
    )()
    batch = next(iter(dm.train_dataloader()))
    assert len(batch.tuples) == 4 and all(len(t) == 4 for t in batch.tuples)  # q, p, 2 negatives
    assert all(image.shape[0] == 3 for t in batch.tuples for image in t)
    tuples = dm.mine(model, 0)
    clusters = dm.train_split.clusters
    for q, p, *negs in tuples.tolist():
        assert clusters[q] == clusters[p] and clusters[q] not in clusters[negs]
        assert len(set(clusters[negs].tolist())) == len(negs)
    data, pairs = dm.whitening_data()
    assert pairs.shape == (len(dm.train_split.qidxs), 2)
    for a, b in pairs[:10].tolist():
        assert data.paths[a] == dm.train_split.paths[int(dm.train_split.qidxs[pairs.tolist().index([a, b])])]
        assert data.labels[a] == data.labels[b]
    assert torch.equal(data[0][0], dm.eval_transform(Image.open(data.paths[0])))


def _drop_key(db):
    del db["train"]["pidxs"]


def _single_cluster(db):
    train = db["train"]
    train["cluster"][train["qidxs"][0]] = 999_999


@pytest.mark.parametrize(
    "edit, match",
    [
        (_drop_key, r"split 'train' lacks key\(s\) \['pidxs'\]"),
        (_single_cluster, r"cluster 999999 of query image \d+ .* has a single image"),
    ],
)
def test_bad_pickles_are_one_line(release, tmp_path, edit, match):
    root = copy_release(release, tmp_path, edit)
    with pytest.raises(CbirError, match=match):
        SfMPairsDataModule(root=root, **SMALL).setup()


def test_missing_image_and_sizes_are_one_line(release, tmp_path):
    root = copy_release(release, tmp_path)
    with (root / "retrieval-SfM-120k.pkl").open("rb") as f:
        cid = pickle.load(f)["train"]["cids"][3]
    (root / "ims" / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid).unlink()
    with pytest.raises(CbirError, match=f"1 of 31 'train' images missing under .*ims.*{cid}"):
        SfMPairsDataModule(root=root, **SMALL).setup()
    with pytest.raises(CbirError, match=r"nowhere.retrieval-SfM-120k.pkl not found; data.root must hold"):
        SfMPairsDataModule(root=tmp_path / "nowhere", **SMALL).setup()
    with pytest.raises(CbirError, match=r"pool_size \(2\) is smaller than neg_num \(3\)"):
        SfMPairsDataModule(root=release, **{**SMALL, "pool_size": 2, "neg_num": 3})
    single = copy_release(release, tmp_path / "one", lambda db: db["train"].update(cluster=[5] * 31))
    with pytest.raises(CbirError, match="has a single cluster, so no negatives exist"):
        SfMPairsDataModule(root=single, **SMALL).setup()


def test_sizes_adapt_to_small_data(release):
    dm = SfMPairsDataModule(root=release, **{**SMALL, "neg_num": 9, "query_size": 500, "pool_size": 900})
    with pytest.warns(UserWarning, match="only 7 clusters besides a query's: mining 7 negatives"):
        dm.setup()
    model = torch.nn.Module()
    model.embed = model.descriptor = lambda x: torch.nn.functional.normalize(x.mean((2, 3)), dim=1)
    tuples = dm.mine(model, 0)
    assert tuples.shape == (len(dm.train_split.qidxs), 2 + 7)  # every pair; all 7 other clusters
    clusters = dm.train_split.clusters
    for q, _, *negs in tuples.tolist():
        assert sorted(clusters[negs].tolist()) == sorted(set(clusters.tolist()) - {int(clusters[q])})
