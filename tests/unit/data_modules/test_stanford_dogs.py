"""StanfordDogsDataModule on files generated in the release's formats: lists/*.mat written with
scipy.io.savemat as cell arrays of strings, VOC XML annotations, JPEG images under Images/."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.io
import torch
from helpers.stanford_dogs import BREEDS, cell, write_annotation, write_release
from PIL import Image

from cbir_lightning.errors import CbirError
from data_modules import StanfordDogsDataModule
from data_modules.stanford_dogs.files import read_box, read_list


def test_list_files_read_back_as_written(tmp_path):
    write_release(tmp_path)
    listing = read_list(tmp_path / "lists" / "train_list.mat")
    assert listing.files[0] == "n02085620-Chihuahua/n02085620_1.jpg"
    assert listing.annotations[4] == "n02085782-Japanese_spaniel/n02085782_7"
    assert listing.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_images_are_cropped_to_the_box_with_official_splits(tmp_path):
    write_release(tmp_path)
    dm = StanfordDogsDataModule(root=tmp_path, image_size=10, grayscale=False, augment=False)
    dm.setup()
    images, labels = dm.train
    assert images.shape == (12, 3, 10, 10) and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # cropped to the box: only the breed's colour is left (JPEG noise aside), no grey background
    mean = images.float().mean((2, 3))
    assert torch.allclose(mean[0], torch.tensor([250.0, 40, 40]), atol=6)
    assert torch.allclose(mean[11], torch.tensor([40.0, 40, 250]), atol=6)
    assert len(dm.eval_items) == 6 and dm.retrieval_split is None  # test split, all against all
    uncropped = StanfordDogsDataModule(root=tmp_path, image_size=10, crop=False)
    uncropped.setup()
    assert uncropped.train[0].shape == (12, 1, 10, 10)
    assert uncropped.train[0][0, 0, 0, 0] < 40  # the grey background is kept
    # grayscale = PIL's "L" conversion of the crop
    gray = StanfordDogsDataModule(root=tmp_path, image_size=10)
    gray.setup()
    assert abs(gray.train[0][0].float().mean().item() - (250 * 299 + 40 * 587 + 40 * 114) / 1000) < 6


def test_test_queries_against_train_database_eval_transform_and_whitening(tmp_path):
    write_release(tmp_path)
    dm = StanfordDogsDataModule(
        root=tmp_path,
        image_size=12,
        database="train",
        database_per_class=3,
        crop=False,
        mean=[0.5],
        std=[0.25],
    )
    images, labels, indices = next(iter(dm.val_dataloader()))
    assert dm.retrieval_split.tolist() == [True] * 6 + [False] * 9
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] + [0] * 3 + [1] * 3 + [2] * 3
    path = tmp_path / "Images" / BREEDS[1] / "n02085782_10.jpg"  # the first test image of breed 1
    x = dm.eval_transform(Image.open(path))
    assert torch.equal(x, images[2])
    gray = np.asarray(Image.open(path).convert("L"), dtype=np.float64)  # 30 x 40 -> 12 x 12 by area averaging
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(gray)[None, None], 12)[0].round()
    assert torch.allclose(x.double(), (expected / 255 - 0.5) / 0.25, atol=1e-6)
    dataset, pairs = dm.whitening_data()
    assert len(dataset) == 12 and len(pairs) == 3 * 6
    assert all(dataset[int(i)][1] == dataset[int(j)][1] for i, j in pairs)


def test_breed_pairs_and_class_batches(tmp_path):
    write_release(tmp_path)
    dm = StanfordDogsDataModule(root=tmp_path, image_size=8, sampling="pairs", batch_size=6, epoch_length=2)
    x1, x2, same = next(iter(dm.train_dataloader()))
    assert x1.shape == (6, 1, 8, 8) and same.tolist() == [1.0, 0.0] * 3
    dm = StanfordDogsDataModule(root=tmp_path, image_size=8, classes_per_batch=3, samples_per_class=2)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (6, 1, 8, 8) and torch.bincount(labels).tolist() == [2, 2, 2]


def test_largest_box_is_used_and_outside_box_is_clamped_with_a_warning(tmp_path):
    path = tmp_path / "ann"
    write_annotation(path, BREEDS[0], (40, 30), [(1, 1, 5, 5), (10, 2, 30, 28), (0, 0, 3, 3)])
    assert read_box(path, 40, 30) == (10, 2, 30, 28)
    write_annotation(path, BREEDS[0], (40, 30), [(-3, 4, 55, 29)])
    with pytest.warns(UserWarning, match=r"ann: box \(-3, 4, 55, 29\) lies outside the 40x30 image"):
        assert read_box(path, 40, 30) == (0, 4, 40, 29)
    write_annotation(path, BREEDS[0], (40, 30), [(50, 40, 60, 45)])
    with warnings.catch_warnings(), pytest.raises(CbirError, match="has no area inside"):
        warnings.simplefilter("ignore")
        read_box(path, 40, 30)
    write_annotation(path, BREEDS[0], (40, 30), [])
    with pytest.raises(CbirError, match="ann: no object/bndbox"):
        read_box(path, 40, 30)


def test_bad_release_files_give_one_line_errors(tmp_path):
    with pytest.raises(CbirError, match="has no lists/ folder"):
        StanfordDogsDataModule(root=tmp_path).setup()
    write_release(tmp_path / "a")
    scipy.io.savemat(
        tmp_path / "a/lists/test_list.mat", {"file_list": cell(["x.jpg"]), "labels": np.ones((1, 1))}
    )
    with pytest.raises(CbirError, match=r"test_list.mat lacks \['annotation_list'\]"):
        StanfordDogsDataModule(root=tmp_path / "a").setup()
    (tmp_path / "a/lists/test_list.mat").write_bytes(b"not a mat file")
    with pytest.raises(CbirError, match=r"test_list.mat is not a readable .mat file"):
        StanfordDogsDataModule(root=tmp_path / "a").setup()
    write_release(tmp_path / "b")
    bad = tmp_path / "b/Images" / BREEDS[2] / "n02085936_13.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(CbirError, match=r"n02085936_13.jpg: corrupt or unreadable image"):
        StanfordDogsDataModule(root=tmp_path / "b").setup()
    bad.unlink()
    with pytest.raises(CbirError, match=r"n02085936_13.jpg \(listed in lists/train_list.mat\) not found"):
        StanfordDogsDataModule(root=tmp_path / "b").setup()
    with pytest.raises(CbirError, match="mean and std must both be 1 numbers"):
        StanfordDogsDataModule(mean=[0.5, 0.5, 0.5], std=[1, 1, 1])
