"""Pooling against formulas, hand-computed maps and cirtorch's published R-MAC algorithm (re-derived here)."""

from __future__ import annotations

import math

import pytest
import torch

from cbir_lightning.pooling import GeM, build_pooling, gem, mac, rmac, rmac_regions, spoc
from cbir_lightning.pooling.functional import l2n

pytestmark = pytest.mark.usefixtures("one_thread")


def _map() -> torch.Tensor:
    # one image, two channels, 2x2: channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 0], [0, 8]]
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])


def test_mac_spoc_gem_hand_computed():
    x = _map()
    assert torch.equal(mac(x), torch.tensor([[4.0, 8.0]]))
    assert torch.allclose(spoc(x), torch.tensor([[2.5, 2.0]]))
    expected = torch.tensor([[(100 / 4) ** (1 / 3), (512 / 4) ** (1 / 3)]])  # (1+8+27+64)/4, 8^3/4
    assert torch.allclose(gem(x, 3.0, eps=1e-12), expected, rtol=1e-6)


def test_gem_limits_and_eps():
    x = torch.rand(3, 5, 6, 7) + 0.1
    assert torch.allclose(gem(x, 1.0), spoc(x), atol=1e-6)
    assert torch.allclose(gem(x.double(), 200.0), mac(x.double()), rtol=2e-2)
    # negative activations are clamped to eps before the power
    neg = -torch.ones(1, 1, 2, 2)
    assert torch.allclose(gem(neg, 3.0, eps=1e-6), torch.tensor([[1e-6]]), rtol=1e-4)


def test_gem_layer_learns_p():
    layer = GeM()
    assert isinstance(layer.p, torch.nn.Parameter) and layer.p.item() == 3.0
    x = torch.rand(2, 4, 3, 3) + 0.1
    layer(x).sum().backward()
    assert layer.p.grad is not None and layer.p.grad.abs().item() > 0
    assert not GeM(learn_p=False).p.requires_grad


def _cirtorch_regions(H: int, W: int, L: int = 3) -> list[tuple[int, int, int]]:
    """cirtorch.layers.functional.rmac's region loop as published (torch ops, its variable names)."""
    ovr = 0.4
    steps = torch.tensor([2.0, 3, 4, 5, 6, 7])
    w = min(W, H)
    b = (max(H, W) - w) / (steps - 1)
    _, idx = torch.min(torch.abs(((w**2 - w * b) / w**2) - ovr), 0)
    Wd = Hd = 0
    if H < W:
        Wd = idx.item() + 1
    elif H > W:
        Hd = idx.item() + 1
    regions = []
    for l in range(1, L + 1):  # noqa: E741 - the published name
        wl = math.floor(2 * w / (l + 1))
        wl2 = math.floor(wl / 2 - 1)
        b = 0 if l + Wd == 1 else (W - wl) / (l + Wd - 1)
        cenW = torch.floor(wl2 + torch.arange(l + Wd, dtype=torch.float32) * b) - wl2
        b = 0 if l + Hd == 1 else (H - wl) / (l + Hd - 1)
        cenH = torch.floor(wl2 + torch.arange(l + Hd, dtype=torch.float32) * b) - wl2
        for i_ in cenH.tolist():
            for j_ in cenW.tolist():
                if wl == 0:
                    continue
                regions.append((int(i_), int(j_), wl))
    return regions


def _cirtorch_rmac(x: torch.Tensor, L: int = 3, eps: float = 1e-6) -> torch.Tensor:
    H, W = x.shape[-2:]
    v = x.amax(dim=(-2, -1))
    v = v / (v.norm(dim=1, keepdim=True) + eps)
    for i, j, wl in _cirtorch_regions(H, W, L):
        vt = x[:, :, i : i + wl, j : j + wl].amax(dim=(-2, -1))
        v = v + vt / (vt.norm(dim=1, keepdim=True) + eps)
    return v


def test_rmac_regions_hand_computed():
    # square 4x4, 2 levels: one 4x4 region, then 2x2 regions of side 2 at starts 0 and 2
    assert rmac_regions(4, 4, 2) == [(0, 0, 4), (0, 0, 2), (0, 2, 2), (2, 0, 2), (2, 2, 2)]
    # square maps have l x l regions on level l: 1 + 4 + 9
    assert len(rmac_regions(10, 10, 3)) == 14
    # 6 x 10 (wider): overlap of steps s is |(36 - 6 * 4 / (s - 1)) / 36 - 0.4|, smallest for s = 2 -> one
    # extra region column; level 1 has side 6 at left = 0 and 4
    assert rmac_regions(6, 10, 1) == [(0, 0, 6), (0, 4, 6)]


@pytest.mark.parametrize("levels", [1, 3, 4])
def test_rmac_regions_match_cirtorch(levels):
    for height in range(1, 26):
        for width in range(1, 26):
            assert rmac_regions(height, width, levels) == _cirtorch_regions(height, width, levels), (
                height,
                width,
            )


def test_rmac_matches_cirtorch():
    torch.manual_seed(0)
    for shape in [(7, 7), (5, 9), (12, 6), (1, 3), (16, 30)]:
        x = torch.rand(2, 8, *shape)
        assert torch.allclose(rmac(x), _cirtorch_rmac(x), atol=1e-6)


def test_l2n_and_builder():
    x = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(l2n(x, eps=0), torch.tensor([[0.6, 0.8]]))
    assert isinstance(build_pooling("gem", p=4.0), GeM) and build_pooling("gem", p=4.0).p.item() == 4.0
    from cbir_lightning.errors import CbirError

    with pytest.raises(CbirError, match="unknown pooling 'avg'"):
        build_pooling("avg")
