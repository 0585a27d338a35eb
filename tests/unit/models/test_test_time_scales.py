"""Test-time zooms: the zoom itself (hand-computed on a square), and SiameseModule averaging the
embeddings over the zooms only outside training."""

from __future__ import annotations

import pytest
import torch

from cbir_lightning.models import KochSiameseNet, SiameseModule
from cbir_lightning.models.test_time_scales import mean_over_scales, zoom


def _square(side: int, size: int = 32) -> torch.Tensor:
    image = torch.zeros(1, 1, size, size)
    lo = (size - side) // 2
    image[..., lo : lo + side, lo : lo + side] = 1
    return image


def test_zoom_scales_a_centred_square_about_the_centre():
    assert torch.equal(zoom(_square(16), 1.0), _square(16))
    half, double = zoom(_square(16), 0.5), zoom(_square(8), 2.0)
    # a 16 px square at half size covers 8 x 8 px (bilinear: the ink is kept, spread over its edges)
    assert half.sum().item() == pytest.approx(64, abs=1e-3)
    assert torch.allclose(half, _square(8), atol=1e-6)
    # an 8 px square at twice the size: 16 x 16 px of ink (its edge pixels interpolated), none outside
    assert double.sum().item() == pytest.approx(256, abs=1e-3)
    assert torch.all(double[..., 9:23, 9:23] == 1) and double[..., 7:25, 7:25].sum() == double.sum()
    assert torch.allclose(half.flip(-1), half) and torch.allclose(half.transpose(-1, -2), half)
    with pytest.raises(ValueError, match="positive"):
        zoom(_square(8), 0.0)


def test_mean_over_scales_averages_the_embeddings_of_the_zooms():
    images = torch.rand(3, 1, 20, 20)
    embed = lambda x: x.flatten(1)[:, :5] * 2  # noqa: E731
    expected = (embed(images) + embed(zoom(images, 0.9)) + embed(zoom(images, 1.1))) / 3
    assert torch.allclose(mean_over_scales(embed, images, [1.0, 0.9, 1.1]), expected)


def test_siamese_module_zooms_only_outside_training():
    torch.manual_seed(0)
    net = KochSiameseNet(input_size=20, channels=[4, 4], kernel_sizes=[3, 3], padding=1, embedding_dim=6)
    module = SiameseModule(net, test_time_scales=[1.0, 0.8])
    images = torch.rand(4, 1, 20, 20)
    module.eval()
    with torch.no_grad():
        expected = (net.embed(images) + net.embed(zoom(images, 0.8))) / 2
        assert torch.allclose(module.embed(images), expected)
        assert not torch.allclose(module.embed(images), net.embed(images))
        module.train()
        assert torch.allclose(module.embed(images), net.embed(images))
    assert module.hparams.test_time_scales == [1.0, 0.8]


def test_zoom_equals_affine_grid_sampling():
    """The grid written out (ONNX-exportable) is affine_grid's for theta = diag(1 / scale)."""
    import torch.nn.functional as F

    images = torch.rand(2, 1, 21, 17)
    for scale in (0.8, 0.9, 1.1, 1.25):
        theta = torch.tensor([[1 / scale, 0.0, 0.0], [0.0, 1 / scale, 0.0]]).expand(2, 2, 3)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        expected = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        assert torch.allclose(zoom(images, scale), expected, atol=1e-5)
