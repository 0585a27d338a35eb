"""CIFAR10DataModule on batches written in torchvision's format and on generated image folders; the
query/database split of the retrieval callback (the CLI runs: tests/integration/test_cifar10.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbir_lightning.callbacks import RetrievalMetrics
from cbir_lightning.errors import CbirError
from cbir_lightning.metrics import retrieval_metrics
from data_modules import CIFAR10DataModule
from data_modules.cifar10.batches import CLASSES, TRAIN_BATCHES
from data_modules.transforms.normalize import IMAGENET_MEAN, IMAGENET_STD


def write_batches(root: Path, per_batch: int = 20, test: int = 30, bytes_keys: bool = True) -> dict:
    """torchvision's cifar-10-batches-py: pickled dicts with data uint8 [N, 3072] and labels (list)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    written = {}
    for name, n in [*((b, per_batch) for b in TRAIN_BATCHES), ("test_batch", test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n)]
        batch = {
            key("batch_label"): key(f"{name} of 5"),
            key("labels"): labels,
            key("data"): data,
            key("filenames"): [key(f"img_{i}.png") for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, labels)
    meta = {key("label_names"): [key(c) for c in CLASSES], key("num_cases_per_batch"): per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def write_folders(root: Path, classes=("cat", "dog", "frog"), train: int = 4, test: int = 2, size: int = 8):
    """train/<class>/*.png and test/<class>/*.png, each class its own colour plus noise."""
    rng = np.random.default_rng(1)
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 * c + 40, 10, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def test_pickle_batches_match_torchvision_reader(tmp_path, monkeypatch):
    """str keys (what the official Python 2 files decode to): compare with torchvision's own reader."""
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets import CIFAR10

    write_batches(tmp_path, bytes_keys=False)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # our files are not the md5s
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args: True)
    dm = CIFAR10DataModule(root=tmp_path, mean=None, std=None)
    dm.setup()

    def torchvision_split(train: bool) -> tuple[torch.Tensor, list[int], list[str]]:
        reference = CIFAR10(str(tmp_path), train=train)
        return (
            torch.from_numpy(reference.data).permute(0, 3, 1, 2),
            list(reference.targets),
            reference.classes,
        )

    images, labels, classes = torchvision_split(True)  # torchvision gives HWC images
    assert torch.equal(dm.train[0], images) and dm.train[1].tolist() == labels
    images, labels, _ = torchvision_split(False)
    assert torch.equal(dm.eval_items.images[dm.retrieval_split], images)
    assert dm.eval_items.labels[dm.retrieval_split].tolist() == labels
    assert torch.equal(dm.eval_items.images[~dm.retrieval_split], dm.train[0])  # database = train
    assert dm.classes == list(classes)


def test_pickle_batches_with_bytes_keys_layout_and_transform(tmp_path):
    written = write_batches(tmp_path, bytes_keys=True)
    dm = CIFAR10DataModule(root=tmp_path, query_per_class=2, database_per_class=3)
    dm.setup()
    data, labels = written["data_batch_1"]
    # row = R plane, G plane, B plane, each 32 x 32 row-major
    assert torch.equal(dm.train[0][0, 1], torch.from_numpy(data[0, 1024:2048].reshape(32, 32)))
    assert len(dm.train[0]) == 100 and dm.train[1][:20].tolist() == labels
    assert int(dm.retrieval_split.sum()) == 20 and len(dm.eval_items) == 20 + 30
    # contract 3: eval_transform of the same picture gives exactly the loader's tensor (ImageNet normalised)
    items = list(dm.val_dataloader())[0]
    picture = Image.fromarray(written["test_batch"][0][0].reshape(3, 32, 32).transpose(1, 2, 0))
    x = dm.eval_transform(picture)
    assert torch.equal(x, items[0][0])
    by_hand = (
        torch.from_numpy(written["test_batch"][0][0].reshape(3, 32, 32)).float() / 255
        - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    ) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(x, by_hand)


def test_image_folders_split_sizes_and_eval_transform(tmp_path):
    write_folders(tmp_path)
    dm = CIFAR10DataModule(root=tmp_path, image_size=4, database_per_class=3, mean=None, std=None)
    dm.setup()
    assert dm.classes == ["cat", "dog", "frog"]
    assert dm.train[0].shape == (12, 3, 4, 4) and dm.train[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert dm.retrieval_split.tolist() == [True] * 6 + [False] * 9
    images, labels, indices = next(iter(dm.val_dataloader()))
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2] and indices.tolist() == list(
        range(15)
    )
    for i, path in enumerate([tmp_path / "test/cat/0000.png", tmp_path / "test/frog/0001.png"]):
        x = dm.eval_transform(Image.open(path))
        assert torch.equal(x, images[[0, 5][i]])
        # 8 px -> 4 px by area averaging: mean of each 2 x 2 block, rounded to uint8
        raw = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float()
        expected = torch.nn.functional.avg_pool2d(raw[None], 2)[0].round() / 255
        assert torch.allclose(x, expected)


def test_training_batches_and_whitening_data(tmp_path):
    write_folders(tmp_path, train=5)
    dm = CIFAR10DataModule(
        root=tmp_path, image_size=8, classes_per_batch=3, samples_per_class=2, epoch_length=3
    )
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    images, labels = batches[0]
    assert images.shape == (6, 3, 8, 8) and torch.bincount(labels).tolist() == [2, 2, 2]
    assert images.min() < 0  # normalised
    dm = CIFAR10DataModule(root=tmp_path, image_size=8, sampling="pairs", batch_size=4, epoch_length=2)
    x1, x2, same = next(iter(dm.train_dataloader()))
    assert x1.shape == x2.shape == (4, 3, 8, 8) and same.tolist() == [1.0, 0.0, 1.0, 0.0]
    # contract 6: training images in the eval transform, same-class pairs
    dm = CIFAR10DataModule(root=tmp_path, image_size=8, whitening_pairs=7)
    dataset, pairs = dm.whitening_data()
    assert len(dataset) == 15 and pairs.shape == (7, 2)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert all(dataset[int(i)][1] == dataset[int(j)][1] for i, j in pairs)
    image = Image.open(tmp_path / "train/dog/0002.png")
    assert torch.equal(dataset[7][0], dm.eval_transform(image))
    all_pairs = CIFAR10DataModule(root=tmp_path, whitening_pairs=10**6).whitening_data()[1]
    assert len(all_pairs) == 3 * (5 * 4 // 2)


def test_bad_input_gives_one_line_errors(tmp_path):
    with pytest.raises(CbirError, match="neither cifar-10-batches-py/ .* nor train/ and test/"):
        CIFAR10DataModule(root=tmp_path).setup()
    write_folders(tmp_path / "a")
    (tmp_path / "a/train/empty").mkdir()
    with pytest.raises(CbirError, match=r"class folder .*empty holds no images"):
        CIFAR10DataModule(root=tmp_path / "a").setup()
    write_folders(tmp_path / "b")
    bad = tmp_path / "b/test/dog/0000.png"
    bad.write_bytes(b"\xff\xd8\xff not really an image")
    with pytest.raises(CbirError, match=r"0000.png: corrupt or unreadable image"):
        CIFAR10DataModule(root=tmp_path / "b").setup()
    write_batches(tmp_path / "c")
    (tmp_path / "c/cifar-10-batches-py/data_batch_3").write_bytes(pickle.dumps({b"data": 1}, protocol=2))
    with pytest.raises(CbirError, match=r"data_batch_3: no 'labels' field"):
        CIFAR10DataModule(root=tmp_path / "c").setup()
    (tmp_path / "c/cifar-10-batches-py/data_batch_3").write_bytes(b"\x80\x02}q")  # truncated
    with pytest.raises(CbirError, match=r"data_batch_3 is not a readable CIFAR-10 batch"):
        CIFAR10DataModule(root=tmp_path / "c").setup()
    (tmp_path / "c/cifar-10-batches-py/test_batch").unlink()
    (tmp_path / "c/cifar-10-batches-py/data_batch_3").unlink()
    with pytest.raises(CbirError, match=r"data_batch_3 not found"):
        CIFAR10DataModule(root=tmp_path / "c").setup()
    with pytest.raises(CbirError, match="mean and std"):
        CIFAR10DataModule(mean=[0.5], std=[0.5, 0.5, 0.5])


class DotModule:
    @staticmethod
    def similarity(q, d):
        return q @ d.T


def test_callback_scores_queries_against_database_only():
    # queries 0, 1; database 2..5. 1-D embeddings, dot similarity.
    emb = torch.tensor([[1.0], [-1.0], [3.0], [2.0], [-0.5], [-4.0]])
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    split = torch.tensor([True, True, False, False, False, False])
    data = {"embeddings": emb, "labels": labels, "indices": torch.arange(6)}
    metrics = RetrievalMetrics(ks=(1,)).compute(DotModule(), data, None, split)
    # query 0 (label 0) ranks database 2 (3.0, no), 3 (2.0, yes), 4 (-0.5, no), 5 (-4.0, yes):
    # AP = (1/2 + 2/4) / 2; query 1 (label 1) ranks 5 (4.0, no), 4 (0.5, yes), 3 (-2, no), 2 (-3, yes): same
    assert metrics["mAP"] == pytest.approx(0.5)
    assert metrics["recall@1"] == pytest.approx(0.0)
    reference = retrieval_metrics(
        emb[:2], emb[2:], labels[:2], labels[2:], similarity=DotModule.similarity, ks=(1,)
    )
    assert metrics == reference
    # without a split every item is scored against all the others (Omniglot behaviour unchanged)
    everyone = RetrievalMetrics(ks=(1,)).compute(DotModule(), data, None)
    assert everyone == retrieval_metrics(
        emb, emb, labels, labels, similarity=DotModule.similarity, ks=(1,), exclude_self=True
    )
