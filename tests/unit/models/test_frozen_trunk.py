"""A frozen trunk and the layers after it compute exactly what the whole net computes, and only those
layers train (what a feature cache relies on)."""

from __future__ import annotations

import warnings

import pytest
import torch

from cbir_lightning.contracts import FeatureBatch, FeatureEvalBatch, FrozenTrunkModel
from cbir_lightning.errors import CbirError
from cbir_lightning.models import DSHModule, GeMSiameseModule, PretrainedHashNet

pytestmark = pytest.mark.usefixtures("one_thread")


def gem(**kwargs) -> GeMSiameseModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GeMSiameseModule(backbone="efficientnet_lite0", weights=None, freeze="backbone", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"learn_p": False}, (1280,)),  # pooling fixed: the cache holds pooled vectors
        ({"learn_p": False, "whitening": 64}, (1280,)),
        ({"learn_p": True}, (1280, 2, 2)),  # GeM p trains: feature maps
        ({"learn_p": False, "trainable_stages": 2, "whitening": 32}, (192, 2, 2)),  # last stages train
    ],
)
def test_trunk_then_rest_equals_the_whole_net(kwargs, shape):
    module = gem(**kwargs).eval()
    assert isinstance(module, FrozenTrunkModel)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = module.frozen_trunk()(images)
        assert tuple(features.shape[1:]) == shape
        assert torch.allclose(module.embed_features(features), module.embed(images), atol=1e-6)
        out = module.validation_step(FeatureEvalBatch(features, torch.zeros(3), torch.arange(3)), 0)
        assert torch.allclose(out["embeddings"], module.embed(images), atol=1e-6)


def test_only_the_layers_after_the_trunk_train():
    module = gem(learn_p=True, trainable_stages=1, freeze_batchnorm=True, whitening=16)
    module.train()
    trunk = module.frozen_trunk()
    assert not any(p.requires_grad for p in trunk.parameters())
    assert all(not m.training for m in trunk.modules())
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("backbone.features.model.conv_head", "pool.", "whiten.")) for n in trainable
    )
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    features = trunk(torch.randn(8, 3, 64, 64))
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    loss = module.training_step(FeatureBatch(features, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])), 0)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items())
    assert not torch.equal(module.whiten.weight, torch.zeros_like(module.whiten.weight))


def test_nothing_frozen_means_no_trunk_and_multiscale_refuses_the_cache():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = GeMSiameseModule(backbone="efficientnet_lite0", weights=None)
    assert free.frozen_trunk() is None
    with pytest.raises(CbirError, match="single-scale"):
        gem(eval_scales=[1.0, 0.5]).frozen_trunk()
    with pytest.raises(CbirError, match="trainable_stages must be between 0 and 8"):
        gem(trainable_stages=9)
    with pytest.raises(CbirError, match="needs freeze: backbone"):
        GeMSiameseModule(backbone="efficientnet_lite0", weights=None, trainable_stages=1)


@pytest.mark.parametrize("kwargs", [{"learn_p": False}, {"learn_p": True, "hidden": 16}])
def test_hash_net_trunk_then_rest_equals_the_whole_net(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = PretrainedHashNet(bits=12, weights=None, freeze_backbone=True, **kwargs)
    module = DSHModule(net=net).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        features = module.frozen_trunk()(images)
        assert torch.equal(module.embed_features(features), module.embed(images))
    module.train()
    loss = module.training_step(FeatureBatch(features, torch.tensor([0, 0, 1, 1])), 0)
    assert loss.requires_grad


def test_whitening_hidden_makes_the_head_a_small_mlp():
    module = gem(learn_p=False, whitening=32, whitening_hidden=16)
    layers = [type(m).__name__ for m in module.whiten]
    assert layers == ["Linear", "BatchNorm1d", "ReLU", "Linear"] and module.whiten.out_features == 32
    with pytest.raises(CbirError, match="whitening_hidden needs whitening"):
        gem(whitening_hidden=16)
