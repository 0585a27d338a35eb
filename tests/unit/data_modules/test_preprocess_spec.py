"""Each DataModule describes its ``eval_transform`` as data (``preprocess_spec``), and ``preprocess`` on that
spec gives exactly what ``eval_transform`` gives (what a model file and an ONNX export rely on)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cbir_lightning.errors import CbirError
from cbir_lightning.export.preprocess import check_spec, spec_of_datamodule
from data_modules import (
    CIFAR10DataModule,
    LandmarksTestDataModule,
    OmniglotDataModule,
    PhotoCollectionDataModule,
    StanfordDogsDataModule,
)
from data_modules.base import RetrievalDataModule


@pytest.mark.parametrize(
    "make",
    [
        lambda: OmniglotDataModule(root="unused", image_size=28),
        lambda: CIFAR10DataModule(root="unused", image_size=24),
        lambda: CIFAR10DataModule(root="unused", mean=None, std=None),
        lambda: StanfordDogsDataModule(root="unused", image_size=32),
        lambda: LandmarksTestDataModule(root="unused", image_size=48),
        lambda: LandmarksTestDataModule(root="unused", image_size=40, keep_aspect=False),
        lambda: PhotoCollectionDataModule(root="unused", image_size=36),
        lambda: PhotoCollectionDataModule(root="unused", image_size=36, resize="squash"),
    ],
)
def test_spec_equals_eval_transform(make):
    dm = make()
    spec = json.loads(json.dumps(dm.preprocess_spec()))  # plain data, as a model file stores it
    assert spec == spec_of_datamodule(dm)
    assert check_spec(spec, dm.eval_transform) <= 1e-6


def test_photos_squashed_keep_the_whole_photo():
    """``resize: squash`` is the whole photo resized to the square (a 2:1 photo's black left 30 columns are
    the square's left 3 columns), ``crop`` its centre square (columns 50-149: the black is cut off)."""
    photo = Image.new("RGB", (200, 100), (255, 255, 255))
    photo.paste((0, 0, 0), (0, 0, 30, 100))
    plain = {"root": "unused", "image_size": 20, "mean": [0] * 3, "std": [1] * 3}
    squash = PhotoCollectionDataModule(resize="squash", **plain)
    crop = PhotoCollectionDataModule(**plain)
    assert (squash.preprocess_spec()["resize"], crop.preprocess_spec()["resize"]) == (
        "bilinear",
        "centre_square",
    )
    squashed = squash.eval_transform(photo)
    assert squashed[:, :, :2].max() < 0.05 and squashed[:, :, 5:].min() > 0.95
    assert crop.eval_transform(photo).min() > 0.95


def test_an_unknown_resize_is_one_line():
    with pytest.raises(CbirError, match="resize must be one of crop, squash, got 'stretch'") as err:
        PhotoCollectionDataModule(root="unused", resize="stretch")
    assert "\n" not in str(err.value)


def test_a_datamodule_without_a_spec_is_one_line():
    class Opaque(RetrievalDataModule):
        def eval_transform(self, image):
            return image

    with pytest.raises(CbirError, match="Opaque does not describe its eval_transform") as err:
        spec_of_datamodule(Opaque())
    assert "\n" not in str(err.value)
