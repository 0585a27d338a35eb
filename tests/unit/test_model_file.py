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
from cbir_lightning.model_file import FORMAT, VERSION, ModelFile, current_hyper_parameters, is_model_file

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
    """The converted module is the checkpoint's class with the checkpoint's weights, exactly; ordinary
    loading refuses the older checkpoints with loss names (one line naming convert) and loads the others,
    which embed as the model file does."""
    ckpt, out = written
    model_file = ModelFile.load(out)
    checkpoint = read_checkpoint(ckpt)
    module = model_file.module()
    assert type(module) is checkpoint.module_class
    state = checkpoint.contents["state_dict"]
    assert module.state_dict().keys() == state.keys()
    assert all(torch.equal(module.state_dict()[key], value) for key, value in state.items())
    images = torch.stack([model_file.transform(sample_images()[0])])
    with torch.no_grad():
        ours = module.embed(images)
        fresh = ModelFile.from_checkpoint(ckpt).module().embed(images)
        assert torch.equal(fresh, ours)
        if ckpt.parent.name == "dsh_cifar10":  # no loss name: today's hyperparameters
            assert torch.equal(checkpoint.module().embed(images), ours)
        else:
            with pytest.raises(CbirError, match=rf"cannot load checkpoint {ckpt}.*cbir-lightning convert"):
                checkpoint.module()
    assert ours.shape[1] == model_file.dim or model_file.whitening is not None


CIRTORCH, PML = "cbir_lightning.losses.CirtorchContrastiveLoss", "pytorch_metric_learning."
GEM = {"_class_path": "cbir_lightning.models.GeMSiameseModule", "backbone": "resnet18"}


@pytest.mark.parametrize(
    ("old", "loss", "miner"),
    [
        ({"loss": "contrastive", "margin": None, "miner": "default"},
         {"class_path": CIRTORCH, "init_args": {"margin": 0.7}}, None),
        ({"loss": "contrastive", "margin": 0.85, "miner": "multi_similarity"},
         {"class_path": CIRTORCH, "init_args": {"margin": 0.85}}, None),
        ({"loss": "pml_triplet", "margin": 0.7, "loss_kwargs": {"margin": 0.1}, "miner": "default"},
         {"class_path": PML + "losses.TripletMarginLoss", "init_args": {"margin": 0.1}},
         {"class_path": PML + "miners.TripletMarginMiner", "init_args": {}}),
        ({"loss": "pml_contrastive", "miner": "multi_similarity", "miner_kwargs": {"epsilon": 0.2}},
         {"class_path": PML + "losses.ContrastiveLoss", "init_args": {}},
         {"class_path": PML + "miners.MultiSimilarityMiner", "init_args": {"epsilon": 0.2}}),
        ({"loss": "pml_multi_similarity", "miner": None},
         {"class_path": PML + "losses.MultiSimilarityLoss", "init_args": {}}, None),
        ({"loss": {"class_path": PML + "losses.MultiSimilarityLoss"}, "miner": "default"},
         {"class_path": PML + "losses.MultiSimilarityLoss"},
         {"class_path": PML + "miners.MultiSimilarityMiner", "init_args": {}}),
    ],
)  # fmt: skip
def test_the_converter_maps_old_gem_loss_names_as_they_were_built(old, loss, miner):
    hparams = current_hyper_parameters({**GEM, **old}, {})
    assert hparams["loss"] == loss and hparams["miner"] == miner
    assert not {"margin", "loss_kwargs", "miner_kwargs"} & hparams.keys()
    assert hparams["_instantiator"] == "pytorch_lightning.cli.instantiate_module"


def test_the_converter_maps_batch_losses_old_paths_and_pretrained_sources():
    old = {
        "_class_path": "cbir_lightning.models.SiameseModule",
        "net": {"class_path": "cbir_lightning.models.koch.KochSiameseNet", "init_args": {"input_size": 28}},
        "batch_loss": "bce",
    }
    hparams = current_hyper_parameters(old, {})
    assert hparams["net"]["class_path"] == "cbir_lightning.models.KochSiameseNet"
    assert hparams["batch_loss"] == {"class_path": "cbir_lightning.losses.AllPairsBCELoss"}
    gem = {**GEM, "loss": None, "miner": None, "weights": "IMAGENET1K_V1", "whitening_init": "w.pt"}
    hparams = current_hyper_parameters(gem, {"whiten.weight": torch.zeros(16, 512)})
    assert (hparams["weights"], hparams["whitening_init"], hparams["whitening"]) == (None, None, 16)
    today = {**GEM, "loss": None, "miner": None, "weights": None}
    assert current_hyper_parameters(today, {}) == today  # today's hyperparameters pass unchanged
    with pytest.raises(CbirError, match=r"checkpoint x.ckpt: unknown batch_loss 'hinge'"):
        current_hyper_parameters({**old, "batch_loss": "hinge"}, {}, "checkpoint x.ckpt")
    with pytest.raises(CbirError, match=r"unknown loss 'triplet'"):
        current_hyper_parameters({**GEM, "loss": "triplet"}, {})


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
