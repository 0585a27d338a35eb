"""``read_checkpoint``: one read of the file gives the module, DataModule, identity and whitening file;
bad files are one-line CbirErrors naming the file."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from cbir_lightning.checkpoints import build_datamodule, load_module, read_checkpoint
from cbir_lightning.errors import CbirError
from cbir_lightning.models.siamese_module import SiameseModule
from cbir_lightning.search.model import SearchModel


@pytest.fixture
def ckpt(tiny_run, tmp_path):
    """A copy of the tiny run's checkpoint, alone in its folder (no whitening file beside it)."""
    return shutil.copy(tiny_run["ckpt"], tmp_path / "tiny.ckpt")


def test_search_model_reads_its_checkpoint_once(ckpt, monkeypatch):
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    model = SearchModel.load(ckpt)
    assert len(reads) == 1  # was four: module (twice), DataModule arguments, identity hash
    assert model.identity == read_checkpoint(ckpt).identity


def test_checkpoint_gives_everything_a_caller_needs(ckpt):
    checkpoint = read_checkpoint(ckpt)
    assert checkpoint.module_class is SiameseModule
    assert checkpoint.datamodule_class.__name__ == "OmniglotDataModule"
    assert checkpoint.datamodule_args["_class_path"] == "data_modules.OmniglotDataModule"
    assert callable(checkpoint.datamodule().eval_transform)
    assert checkpoint.whitening_file is None
    module = checkpoint.module()
    assert not module.training
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(module.state_dict()[k], v) for k, v in saved.items())
    assert set(checkpoint.identity) == {"hparams", "weights"}
    checkpoint.contents["state_dict"] = {}  # the module is rebuilt from the contents read, not re-read
    with pytest.raises(CbirError, match="tiny.ckpt"):
        checkpoint.module()
    ckpt.with_suffix(".whitening.pt").write_bytes(b"")
    assert read_checkpoint(ckpt).whitening_file == ckpt.with_suffix(".whitening.pt")


def test_identity_changes_with_the_weights(ckpt, tmp_path):
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = next(iter(data["state_dict"]))
    data["state_dict"][key] = data["state_dict"][key] + 1
    torch.save(data, tmp_path / "other.ckpt")
    first, second = read_checkpoint(ckpt).identity, read_checkpoint(tmp_path / "other.ckpt").identity
    assert first["hparams"] == second["hparams"] and first["weights"] != second["weights"]


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but not a tensor: weights_only refuses it


def test_unsafe_pickle_is_refused_in_one_line(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    refused = r"evil\.ckpt holds objects that a safe load refuses \(it names "
    with pytest.raises(CbirError, match=refused) as err:
        load_module(path)
    assert "\n" not in str(err.value) and "cbir-lightning convert" not in str(err.value)  # it failed too


def test_truncated_checkpoint_is_one_line(ckpt, tmp_path):
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(CbirError, match=r"cut\.ckpt is truncated") as err:
        read_checkpoint(truncated)
    assert "\n" not in str(err.value)


def test_untrusted_module_class_is_refused(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "untrusted_pkg.Model"}}, path)
    with pytest.raises(CbirError, match=r"foreign\.ckpt.*untrusted_pkg\.Model"):
        read_checkpoint(path)


def test_model_config_is_what_the_checkpoint_records(tmp_path):
    """A fit's checkpoint names no pretrained source (the module's on_save_checkpoint); loading takes
    the hyperparameters as recorded (an older checkpoint's sources are the converter's)."""
    path = tmp_path / "gem.ckpt"
    hparams = {"_class_path": "cbir_lightning.models.GeMSiameseModule", "weights": None, "p": 3.0}
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, path)
    config = read_checkpoint(path).model_config()
    assert config == {
        "class_path": "cbir_lightning.models.GeMSiameseModule",
        "dict_kwargs": {"weights": None, "p": 3.0},
    }


def test_build_datamodule_names_its_source():
    with pytest.raises(
        CbirError, match=r"^config file x\.yaml: cannot build its DataModule data_modules\.Nope"
    ):
        build_datamodule({"class_path": "data_modules.Nope", "init_args": {}}, "config file x.yaml")
