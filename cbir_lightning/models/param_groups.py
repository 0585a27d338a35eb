"""Per-layer optimizer parameter groups (Koch et al. set learning rate and L2 weight per layer)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def layer_param_groups(
    net: nn.Module, lr_multipliers: Sequence[float] | None = None, weight_decay: Sequence[float] | None = None
) -> list[dict]:
    """One group per conv/linear layer (in module order, its weight and bias) plus one for the rest.

    ``lr_multipliers[i]`` becomes the group's ``lr_scale`` (applied on top of the optimizer's lr) and
    ``weight_decay[i]`` its ``weight_decay``; with neither given, a single group holds every parameter.
    """
    if lr_multipliers is None and weight_decay is None:
        return [{"params": [p for p in net.parameters() if p.requires_grad]}]
    layers = [m for m in net.modules() if isinstance(m, _WEIGHT_LAYERS)]
    for name, values in (("layer_lr_multipliers", lr_multipliers), ("layer_weight_decay", weight_decay)):
        if values is not None and len(values) != len(layers):
            raise ValueError(
                f"{name} has {len(values)} entries but the net has {len(layers)} conv/linear layers"
            )
    groups, claimed = [], set()
    for i, layer in enumerate(layers):
        params = [p for p in layer.parameters(recurse=False) if p.requires_grad]
        claimed.update(id(p) for p in params)
        group: dict = {"params": params}
        if lr_multipliers is not None:
            group["lr_scale"] = float(lr_multipliers[i])
        if weight_decay is not None:
            group["weight_decay"] = float(weight_decay[i])
        groups.append(group)
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in claimed]
    if rest:
        groups.append({"params": rest})
    return [g for g in groups if g["params"]]
