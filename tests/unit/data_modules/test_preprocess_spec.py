"""Each DataModule describes its ``eval_transform`` as data (``preprocess_spec``), and ``preprocess`` on that
spec gives exactly what ``eval_transform`` gives (what a model file and an ONNX export rely on)."""

from __future__ import annotations

import json

import pytest

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
    ],
)
def test_spec_equals_eval_transform(make):
    dm = make()
    spec = json.loads(json.dumps(dm.preprocess_spec()))  # plain data, as a model file stores it
    assert spec == spec_of_datamodule(dm)
    assert check_spec(spec, dm.eval_transform) <= 1e-6


def test_a_datamodule_without_a_spec_is_one_line():
    class Opaque(RetrievalDataModule):
        def eval_transform(self, image):
            return image

    with pytest.raises(CbirError, match="Opaque does not describe its eval_transform") as err:
        spec_of_datamodule(Opaque())
    assert "\n" not in str(err.value)
