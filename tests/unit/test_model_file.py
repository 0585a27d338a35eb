"""The model file (``cbir_lightning/model_file.py``): made from a checkpoint alone (the legacy fixtures,
one per model family), read back with ``torch.load(weights_only=True)``, its module embeds exactly as the
checkpoint's, and a truncated, foreign or newer file is one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.paths import REPO

from cbir_lightning.checkpoints import read_checkpoint
from cbir_lightning.errors import CbirError
from cbir_lightning.export.preprocess import sample_images
from cbir_lightning.model_file import FORMAT, VERSION, ModelFile, is_model_file

LEGACY = REPO / "tests" / "fixtures" / "legacy"


@pytest.fixture(scope="module", params=["koch_omniglot", "gem_wikiart", "dsh_cifar10"])
def written(request, tmp_path_factory) -> tuple[Path, Path]:
    ckpt = LEGACY / request.param / "model.ckpt"
    out = tmp_path_factory.mktemp("model_file") / f"{request.param}.model"
    ModelFile.from_checkpoint(ckpt).save(out)
    return ckpt, out


def test_a_model_file_is_plain_data_read_with_weights_only(written):
    ckpt, out = written
    data = torch.load(out, map_location="cpu", weights_only=True)
    assert data["format"] == FORMAT and data["version"] == VERSION
    assert data["identity"] == read_checkpoint(ckpt).identity  # what index manifests record
    assert data["provenance"]["checkpoint"] == str(ckpt.resolve())
    assert data["preprocess"]["size"] > 0 and data["similarity"] in ("dot", "model")
    assert (data["whitening"] is not None) == (ckpt.parent / "model.whitening.pt").is_file()
    assert is_model_file(out) and not is_model_file(ckpt)


def test_its_module_embeds_as_the_checkpoints(written):
    ckpt, out = written
    model_file = ModelFile.load(out)
    images = torch.stack([model_file.transform(sample_images()[0])])
    with torch.no_grad():
        ours = model_file.module().embed(images)
        theirs = read_checkpoint(ckpt).module().embed(images)
        fresh = ModelFile.from_checkpoint(ckpt).module().embed(images)
    assert torch.equal(ours, theirs) and torch.equal(fresh, theirs)
    assert ours.shape[1] == model_file.dim or model_file.whitening is not None


def test_bad_files_are_one_line_naming_the_file(written, tmp_path):
    _, out = written
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    foreign = tmp_path / "foreign.model"
    torch.save({"weights": torch.zeros(2)}, foreign)
    newer = tmp_path / "newer.model"
    torch.save({"format": FORMAT, "version": VERSION + 1}, newer)
    text = tmp_path / "text.model"
    text.write_text("not a model")
    for path, words in [
        (truncated, "truncated or not a model file"),
        (foreign, "is not a cbir-lightning model file"),
        (newer, "upgrade"),
        (text, "truncated or not a model file"),
        (tmp_path / "missing.model", "not found"),
    ]:
        with pytest.raises(CbirError, match=words) as err:
            ModelFile.load(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
