"""EnsembleNet: the members' embeddings side by side, their mean score, and one weighted L1 head that
gives the same scores (what an exported index scores with)."""

from __future__ import annotations

import pytest
import torch

from cbir_lightning.errors import CbirError
from cbir_lightning.models import EnsembleNet, KochSiameseNet


def koch(seed: int, dim: int = 8, size: int = 12) -> KochSiameseNet:
    torch.manual_seed(seed)
    net = KochSiameseNet(
        input_size=size,
        channels=[4, 4],
        kernel_sizes=[3, 3],
        padding=1,
        embedding_dim=dim,
        head_weights="nonpositive",
    )
    with torch.no_grad():
        net.head.weight.normal_()  # members with different heads, not the shared initial value
        net.head.bias.fill_(float(seed))
    return net.eval()


def test_embeddings_side_by_side_and_the_mean_score():
    a, b = koch(0, dim=8), koch(1, dim=5)
    ensemble = EnsembleNet([a, b]).eval()
    x, y = torch.rand(3, 1, 12, 12), torch.rand(4, 1, 12, 12)
    with torch.no_grad():
        e, f = ensemble.embed(x), ensemble.embed(y)
        assert e.shape == (3, 13) and ensemble.embedding_dim == 13 and ensemble.input_size == 12
        assert torch.equal(e[:, :8], a.embed(x)) and torch.equal(e[:, 8:], b.embed(x))
        expected = (a.similarity(a.embed(x), a.embed(y)) + b.similarity(b.embed(x), b.embed(y))) / 2
        assert torch.allclose(ensemble.similarity(e, f), expected, atol=1e-6)
        pairs = (a.pair_logits(a.embed(x), a.embed(y[:3])) + b.pair_logits(b.embed(x), b.embed(y[:3]))) / 2
        assert torch.allclose(ensemble.pair_logits(e, f[:3]), pairs, atol=1e-6)
        assert torch.allclose(ensemble(x, y[:3]), pairs, atol=1e-6)


def test_one_weighted_l1_head_scores_as_the_ensemble():
    ensemble = EnsembleNet([koch(0), koch(1), koch(2)]).eval()
    e, f = torch.rand(4, 24), torch.rand(6, 24)
    weight, bias = ensemble.l1_head()
    by_hand = (e[:, None, :] - f[None, :, :]).abs() @ weight + bias
    assert torch.allclose(ensemble.similarity(e, f), by_hand, atol=1e-5)
    assert bias.item() == pytest.approx(1.0)  # mean of the members' biases 0, 1, 2


def test_members_must_agree_and_be_siamese_nets():
    with pytest.raises(CbirError, match="one input size"):
        EnsembleNet([koch(0, size=12), koch(1, size=16)])
    with pytest.raises(CbirError, match="not Linear"):
        EnsembleNet([koch(0), torch.nn.Linear(2, 2)])
    with pytest.raises(CbirError, match="at least one"):
        EnsembleNet([])
    with pytest.raises(CbirError, match="24-d embeddings"):
        EnsembleNet([koch(0), koch(1), koch(2)]).similarity(torch.rand(2, 8), torch.rand(2, 8))
