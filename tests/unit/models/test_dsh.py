"""DSH loss against a per-pair loop of the paper's formula, and the DSHModule's codes / similarity."""

from __future__ import annotations

import itertools

import pytest
import torch

from cbir_lightning.contracts import ClassBatch, PairBatch
from cbir_lightning.losses.dsh import dsh_all_pairs_loss, dsh_pair_loss
from cbir_lightning.models import DSHModule


def paper_pair_loss(b1: list[float], b2: list[float], s: int, m: float, alpha: float) -> float:
    """Liu et al. 2016, eq. (3) for one pair, in plain Python."""
    d = sum((x - y) ** 2 for x, y in zip(b1, b2, strict=True))
    reg = sum(abs(abs(x) - 1) for x in b1) + sum(abs(abs(y) - 1) for y in b2)
    return 0.5 * s * d + 0.5 * (1 - s) * max(m - d, 0.0) + alpha * reg


def test_pair_loss_hand_computed():
    b1 = torch.tensor([[1.0, -1.0]])
    b2 = torch.tensor([[0.5, 1.0]])
    # d = 0.25 + 4 = 4.25; reg = 0 + (0.5 + 0) = 0.5
    similar = dsh_pair_loss(b1, b2, torch.tensor([1.0]), alpha=0.1)
    assert similar.item() == pytest.approx(0.5 * 4.25 + 0.1 * 0.5)
    # dissimilar, m = 2k = 4 < d: hinge inactive
    assert dsh_pair_loss(b1, b2, torch.tensor([0.0]), alpha=0.1).item() == pytest.approx(0.05)
    # margin 6: 0.5 * (6 - 4.25)
    loss = dsh_pair_loss(b1, b2, torch.tensor([0.0]), margin=6, alpha=0.0)
    assert loss.item() == pytest.approx(0.875)


def test_all_pairs_loss_equals_loop_over_pairs():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randn(7, 5, generator=gen) * 1.5
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    expected = [
        paper_pair_loss(codes[i].tolist(), codes[j].tolist(), int(labels[i] == labels[j]), 10.0, 0.01)
        for i, j in itertools.combinations(range(7), 2)
    ]
    got = dsh_all_pairs_loss(codes, labels, alpha=0.01)
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_loss_gradient_pulls_similar_together_and_pushes_dissimilar_apart():
    b1 = torch.tensor([[0.2, 0.1, -0.3]], requires_grad=True)
    b2 = torch.tensor([[0.1, -0.2, 0.4]])
    dsh_pair_loss(b1, b2, torch.tensor([1.0]), alpha=0.0).backward()
    assert torch.allclose(b1.grad, b1.detach() - b2)  # d/db1 of 1/2 ||b1 - b2||^2
    b1.grad = None
    dsh_pair_loss(b1, b2, torch.tensor([0.0]), alpha=0.0).backward()
    assert torch.allclose(b1.grad, -(b1.detach() - b2))


def test_module_codes_are_signs_and_similarity_is_minus_hamming():
    torch.manual_seed(0)
    module = DSHModule(bits=12, channels=(4, 4, 8), hidden=16).eval()
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        relaxed = module.codes(images)
        codes = module.embed(images)
        scores = module.similarity(codes[:2], codes)
    assert codes.shape == (6, 12) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(codes, torch.where(relaxed > 0, 1.0, -1.0))
    brute = -((codes[:2, None, :] != codes[None, :, :]).sum(-1)).float()
    assert torch.equal(scores, brute)
    assert torch.equal(scores, (codes[:2] @ codes.T - 12) / 2)  # q.d = k - 2 hamming
    assert (scores.diagonal() == 0).all()


def test_training_step_on_class_batches_and_pairs_decreases_loss():
    torch.manual_seed(0)
    module = DSHModule(bits=8, channels=(4, 4, 8), hidden=16)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    first = None
    for _ in range(15):
        loss = module.training_step(ClassBatch(images, labels), 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first
    pair_loss = module.training_step(PairBatch(images[:4], images[4:], torch.tensor([1.0, 0.0, 1.0, 0.0])), 0)
    assert pair_loss.ndim == 0 and torch.isfinite(pair_loss)
