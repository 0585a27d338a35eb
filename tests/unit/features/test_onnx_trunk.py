"""ONNX Runtime runs a frozen trunk as PyTorch does, or is not used at all."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cbir_lightning.features.onnx_trunk import OnnxTrunk, onnx_trunk
from cbir_lightning.models.backbones import Backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_backbone_runs_in_onnx_runtime_as_in_pytorch():
    with pytest.warns(UserWarning, match="no pretrained weights"):
        trunk = Backbone("mobilenet_v2", None).eval()
    images = torch.randn(2, 3, 64, 64)
    engine = onnx_trunk(trunk, images, threads=1)
    assert isinstance(engine, OnnxTrunk)
    other = torch.randn(5, 3, 64, 64)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        assert torch.allclose(engine(other), trunk(other), atol=1e-4)


class Unexportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy() * 2)  # leaves the graph: the exporter cannot follow it


class Drifting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.calls  # the traced graph and later PyTorch calls disagree


@pytest.mark.parametrize("module", [Unexportable(), Drifting()])
def test_a_trunk_onnx_cannot_reproduce_stays_in_pytorch(module):
    assert onnx_trunk(module, torch.randn(2, 3, 8, 8), threads=1) is None
