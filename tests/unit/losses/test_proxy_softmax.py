"""The all-classes proxy loss: hand-computed cross-entropy, proxies built, restored and optimised."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity

from cbir_lightning.contracts import ClassBatch
from cbir_lightning.errors import CbirError
from cbir_lightning.losses import InBatchSoftmaxLoss
from cbir_lightning.losses.proxies import proxy_softmax
from cbir_lightning.losses.proxy_softmax_loss import ProxySoftmaxLoss
from cbir_lightning.models import KochSiameseNet, SiameseModule
from data_modules.base import RetrievalDataModule


def test_proxy_softmax_is_cross_entropy_with_a_margin_on_the_true_class():
    scores = torch.tensor([[0.5, 0.1, -0.2], [0.3, 0.9, 0.0]])
    labels = torch.tensor([0, 2])
    s, m = 4.0, 0.2
    by_hand = 0.0
    for row, y in zip(scores.tolist(), labels.tolist(), strict=True):
        logits = [s * (v - m) if c == y else s * v for c, v in enumerate(row)]
        by_hand += -logits[y] + math.log(sum(math.exp(v) for v in logits))
    assert math.isclose(proxy_softmax(scores, labels, s, m).item(), by_hand / 2, rel_tol=1e-6)
    assert torch.isclose(proxy_softmax(scores, labels), F.cross_entropy(scores, labels))
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        proxy_softmax(scores, torch.tensor([0, 3]))


def test_cosine_proxies_give_the_normalized_softmax():
    torch.manual_seed(0)
    loss = ProxySoftmaxLoss(num_classes=5, embedding_dim=4, scale=10.0, distance=CosineSimilarity())
    e, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    cos = F.normalize(e, dim=1) @ F.normalize(loss.proxies.detach(), dim=1).T
    assert torch.isclose(loss(e, labels), F.cross_entropy(10.0 * cos, labels), atol=1e-5)


def test_proxies_are_built_once_and_restored_from_a_state_dict():
    loss = ProxySoftmaxLoss(distance=CosineSimilarity())
    with pytest.raises(CbirError, match="no proxies yet"):
        loss(torch.randn(2, 3), torch.tensor([0, 1]))
    loss.build(7, 3)
    loss.build(7, 3)  # agreeing again is fine
    with pytest.raises(CbirError, match="7, 3"):
        loss.build(8, 3)
    fresh = ProxySoftmaxLoss(distance=CosineSimilarity())
    fresh.load_state_dict(loss.state_dict())
    assert fresh.num_classes == 7 and torch.equal(fresh.proxies, loss.proxies)


def _module(**kwargs) -> SiameseModule:
    torch.manual_seed(0)
    net = KochSiameseNet(input_size=12, channels=(4, 4), kernel_sizes=(3, 3), padding=1, embedding_dim=8)
    return SiameseModule(net, optimizer=lambda p: torch.optim.SGD(p, lr=1.0), **kwargs)


@pytest.mark.parametrize("distance", [None, CosineSimilarity()], ids=["l1_head", "cosine"])
def test_the_class_loss_proxies_are_optimised(distance):
    module = _module(batch_loss=InBatchSoftmaxLoss(), class_loss=ProxySoftmaxLoss(10, 8, distance=distance))
    optimizer = module.configure_optimizers()
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(module.class_loss.proxies) in optimised
    assert optimised == {id(p) for p in module.parameters()}
    before = module.class_loss.proxies.detach().clone()
    batch = ClassBatch(torch.rand(8, 1, 12, 12), torch.tensor([0, 0, 3, 3, 5, 5, 9, 9]))
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    moved = (module.class_loss.proxies.detach() - before).abs().sum(1) > 0
    assert moved[[0, 3, 5, 9]].all()  # every class of the batch moved (the others too, as negatives)
    # the total is the batch loss plus the weighted class loss
    e = module.embed(batch.images)
    expected = module.loss(e, batch.labels) + module.class_loss(e, batch.labels)
    assert torch.isclose(module._class_loss(e, batch.labels), expected)


class _Data(RetrievalDataModule):
    num_classes = 6

    def eval_transform(self, image):
        raise NotImplementedError


class _Trainer:
    datamodule = _Data()


def test_setup_sizes_the_proxies_from_the_datamodule():
    module = _module(batch_loss=None, class_loss=ProxySoftmaxLoss(distance=CosineSimilarity()))
    module._trainer = _Trainer()
    module.setup("fit")
    assert tuple(module.class_loss.proxies.shape) == (6, 8)
    unsized = _module(batch_loss=None, class_loss=ProxySoftmaxLoss(distance=CosineSimilarity()))
    unsized._trainer = type("_NoClasses", (), {"datamodule": object()})()
    with pytest.raises(CbirError, match="needs the number of training classes"):
        unsized.setup("fit")
    with pytest.raises(CbirError, match="needs a class_loss"):
        _module(batch_loss=None)
