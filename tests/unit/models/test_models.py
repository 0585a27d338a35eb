"""Koch net shapes and head, the pair losses (hand-computed), per-layer optimizer groups."""

from __future__ import annotations

import math

import pytest
import torch

from cbir_lightning.errors import CbirError
from cbir_lightning.losses.pair_bce import all_pairs_bce, all_pairs_softmax, pair_bce
from cbir_lightning.models import KochSiameseNet, SiameseModule
from cbir_lightning.models.param_groups import layer_param_groups


def test_paper_architecture_shapes():
    net = KochSiameseNet()
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(64, 10), (128, 7), (128, 4), (256, 4)]
    assert net.embedding[1].in_features == 256 * 6 * 6 and net.embedding[1].out_features == 4096
    out = net(torch.rand(2, 1, 105, 105), torch.rand(2, 1, 105, 105))
    assert out.shape == (2,)


def test_similarity_is_the_l1_head_for_every_pair():
    torch.manual_seed(0)
    net = KochSiameseNet(
        input_size=28,
        channels=[4, 4],
        kernel_sizes=[3, 3],
        padding=1,
        embedding_dim=8,
        score_chunk_elements=16,
    )
    q, d = torch.rand(3, 8), torch.rand(5, 8)
    scores = net.similarity(q, d)
    for i in range(3):
        for j in range(5):
            expected = (net.head.weight[0] * (q[i] - d[j]).abs()).sum() + net.head.bias[0]
            assert torch.isclose(scores[i, j], expected, atol=1e-6)
            assert torch.isclose(net.pair_logits(q[i : i + 1], d[j : j + 1])[0], expected, atol=1e-6)


def test_negative_l1_head_prefers_closer_embeddings():
    net = KochSiameseNet(
        input_size=28, channels=[4], kernel_sizes=[3], embedding_dim=4, head_init="negative_l1"
    )
    q = torch.zeros(1, 4)
    assert torch.argmax(net.similarity(q, torch.tensor([[0.9] * 4, [0.1] * 4, [0.5] * 4]))) == 1


def test_pair_bce_by_hand():
    logits, same = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert math.isclose(pair_bce(logits, same).item(), expected, rel_tol=1e-6)


def test_all_pairs_bce_balances_positives_and_negatives():
    labels = torch.tensor([0, 0, 1])
    logits = torch.tensor([[9.0, 1.0, -1.0], [1.0, 9.0, 2.0], [-1.0, 2.0, 9.0]])

    def softplus(x):
        return math.log1p(math.exp(x))

    positives = [softplus(-1.0), softplus(-1.0)]  # (0,1), (1,0): -log(sigmoid(1))
    negatives = [softplus(-1.0), softplus(2.0), softplus(-1.0), softplus(2.0)]  # -log(1 - sigmoid(x))
    expected = (sum(positives) / 2 + sum(negatives) / 4) / 2
    assert math.isclose(all_pairs_bce(logits, labels).item(), expected, rel_tol=1e-6)


def test_all_pairs_softmax_by_hand_and_against_cross_entropy():
    labels = torch.tensor([0, 0, 1, 1, 2])
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    # hand: anchor 0 picks 1 among {1, 2, 3, 4}; anchor 2 picks 3 among {3, 0, 1, 4}; ...
    rows = {0: (1, [2, 3, 4]), 1: (0, [2, 3, 4]), 2: (3, [0, 1, 4]), 3: (2, [0, 1, 4])}
    terms = []
    for i, (j, negatives) in rows.items():
        row = logits[i, [j, *negatives]]
        terms.append(torch.nn.functional.cross_entropy(row[None], torch.tensor([0])).item())
    assert math.isclose(all_pairs_softmax(logits, labels).item(), sum(terms) / 4, rel_tol=1e-6)
    # negatives far below their positive: nothing left to learn, the loss is 0
    one = torch.tensor([[0.0, 0.0, -1e4], [0.0, 0.0, -1e4], [-1e4, -1e4, 0.0]])
    assert math.isclose(all_pairs_softmax(one, torch.tensor([0, 0, 1])).item(), 0.0, abs_tol=1e-6)
    with pytest.raises(ValueError, match="two samples of one class"):
        all_pairs_softmax(torch.zeros(2, 2), torch.tensor([0, 1]))


def test_layer_groups_scale_lr_and_decay():
    net = KochSiameseNet(input_size=28, channels=[4, 4], kernel_sizes=[3, 3], padding=1, embedding_dim=8)
    module = SiameseModule(
        net,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5),
        layer_lr_multipliers=[1, 2, 3, 4],
        layer_weight_decay=[0.1, 0.2, 0.3, 0.4],
    )
    optimizer = module.configure_optimizers()
    assert [round(g["lr"], 6) for g in optimizer.param_groups] == [0.1, 0.2, 0.3, 0.4]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.2, 0.3, 0.4]
    with pytest.raises(ValueError, match="has 2 entries but the net has 4"):
        layer_param_groups(net, [1, 2])


def test_nonpositive_head_is_a_weighted_l1_distance():
    torch.manual_seed(0)
    net = KochSiameseNet(
        input_size=28, channels=[4], kernel_sizes=[3], embedding_dim=6, head_weights="nonpositive"
    )
    torch.nn.init.normal_(net.head.weight, std=3.0)  # raw weights of both signs
    assert (net.head_weight() <= 0).all() and (net.head.weight > 0).any()
    q, x = torch.rand(1, 6), torch.rand(1, 6)
    farther = x.clone()
    farther[0, 2] = q[0, 2] + 2 * (x[0, 2] - q[0, 2])  # move away from q in one dimension
    assert net.similarity(q, farther) <= net.similarity(q, x)
    expected = (net.head_weight() * (q - x).abs()).sum() + net.head.bias
    assert torch.isclose(net.pair_logits(q, x)[0], expected[0], atol=1e-6)
    start = KochSiameseNet(
        input_size=28,
        channels=[4],
        kernel_sizes=[3],
        embedding_dim=8,
        head_init="negative_l1",
        head_weights="nonpositive",
    )
    assert torch.allclose(start.head_weight(), torch.full((8,), -10.0 / 8))


def test_channels_last_net_computes_what_the_contiguous_net_does():
    kwargs = dict(
        input_size=28, channels=[8, 8], kernel_sizes=[3, 3], padding=1, batch_norm=True, embedding_dim=16
    )
    torch.manual_seed(0)
    nhwc = KochSiameseNet(**kwargs)
    nchw = KochSiameseNet(**kwargs, channels_last=False)
    nchw.load_state_dict(nhwc.state_dict())
    second_conv = 4  # conv, bn, relu, pool, conv: the first conv has one input channel (either layout)
    assert nhwc.features[second_conv].weight.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.features[second_conv].weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(6, 1, 28, 28)
    for net in (nhwc, nchw):
        net.train()
        net.embed(images).sum().backward()
    torch.testing.assert_close(nhwc.eval().embed(images), nchw.eval().embed(images), rtol=1e-5, atol=1e-5)
    for a, b in zip(nhwc.parameters(), nchw.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [0, 8])
def test_koch_net_too_small_an_image_is_one_line(size):
    """An image size the kernels and poolings cannot take (``image_size 0`` in a config) is one CbirError
    line, not a RuntimeError from a convolution wrapped in the config parser's traceback."""
    with pytest.raises(CbirError, match=f"input_size {size} is too small for the Koch net") as err:
        KochSiameseNet(input_size=size, channels=(8, 8, 8, 8), kernel_sizes=(3, 3, 3, 3), embedding_dim=4)
    assert "\n" not in str(err.value)
