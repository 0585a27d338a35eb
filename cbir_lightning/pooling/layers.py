"""Pooling layers (nn.Modules over :mod:`cbir_lightning.pooling.functional`); GeM has a learnable p."""

from __future__ import annotations

import torch
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.pooling import functional as PF


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PF.mac(x)


class SPoC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PF.spoc(x)


class GeM(nn.Module):
    """Generalized-mean pooling; ``p`` is a parameter (initial 3) unless ``learn_p`` is false."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PF.gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}"


class RMAC(nn.Module):
    def __init__(self, levels: int = 3, eps: float = 1e-6) -> None:
        super().__init__()
        self.levels, self.eps = levels, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PF.rmac(x, self.levels, self.eps)


POOLINGS = {"mac": MAC, "spoc": SPoC, "gem": GeM, "rmac": RMAC}


def build_pooling(name: str, p: float = 3.0, learn_p: bool = True) -> nn.Module:
    """The pooling layer by name: ``mac``, ``spoc``, ``gem`` (initial ``p``) or ``rmac``."""
    if name not in POOLINGS:
        raise CbirError(f"unknown pooling {name!r}; choose one of {', '.join(POOLINGS)}")
    return GeM(p, learn_p=learn_p) if name == "gem" else POOLINGS[name]()
