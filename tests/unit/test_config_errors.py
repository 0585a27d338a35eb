"""Untrusted classes named by a checkpoint's DataModule are refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cbir_lightning.checkpoints import checkpoint_datamodule_args
from cbir_lightning.errors import CbirError


def _checkpoint_with_datamodule(tmp_path, class_path: str) -> Path:
    path = tmp_path / "dm.ckpt"
    torch.save(
        {"state_dict": {}, "datamodule_hyper_parameters": {"_class_path": class_path, "root": "x"}}, path
    )
    return path


@pytest.mark.parametrize("class_path", ["untrusted_package.Evil", "collections.OrderedDict"])
def test_checkpoint_datamodule_class_is_restricted(tmp_path, class_path):
    ckpt = _checkpoint_with_datamodule(tmp_path, class_path)
    with pytest.raises(CbirError, match=r"dm\.ckpt"):
        checkpoint_datamodule_args(ckpt)


def test_checkpoint_datamodule_class_of_the_toolkit_is_allowed(tmp_path):
    ckpt = _checkpoint_with_datamodule(tmp_path, "data_modules.OmniglotDataModule")
    assert checkpoint_datamodule_args(ckpt)["_class_path"] == "data_modules.OmniglotDataModule"
