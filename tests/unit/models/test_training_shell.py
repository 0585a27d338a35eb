"""One training shell: the three model families declare a net and losses, the shell's one training step
trains them all on every batch kind, with a miner and a class loss wherever they apply."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses, miners

from cbir_lightning.contracts import ClassBatch, PairBatch, TupleBatch
from cbir_lightning.errors import CbirError
from cbir_lightning.losses import ProxySoftmaxLoss
from cbir_lightning.losses.dsh import dsh_all_pairs_loss, dsh_pair_loss
from cbir_lightning.models import DSHModule, GeMSiameseModule, KochSiameseNet, SiameseModule
from cbir_lightning.models.embedding_module import EmbeddingModule


def _dsh(**kwargs) -> DSHModule:
    torch.manual_seed(0)
    return DSHModule(bits=6, input_size=16, channels=(4, 4, 4), hidden=8, **kwargs)


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("module", [SiameseModule, GeMSiameseModule, DSHModule])
def test_every_family_trains_through_the_shells_one_step(module):
    assert issubclass(module, EmbeddingModule)
    assert "training_step" not in vars(module)


def test_dsh_trains_on_tuples_as_the_pairs_they_hold():
    module = _dsh()
    images = _images(5)
    tuples = [list(images[:3]), list(images[3:])]  # (q, p, n) and (q, p)
    loss = module.training_step(TupleBatch(tuples), 0)
    codes = module.codes(images)
    anchors, others = torch.tensor([0, 0, 3]), torch.tensor([1, 2, 4])
    expected = dsh_pair_loss(codes[anchors], codes[others], torch.tensor([1.0, 0.0, 1.0]), 12.0, 0.01)
    assert torch.allclose(loss, expected, atol=1e-6)


def test_a_miner_chooses_the_pairs_of_any_family():
    module = _dsh(miner=miners.BatchEasyHardMiner())
    images, labels = _images(), torch.tensor([0, 0, 1, 1, 2, 2])
    loss = module.training_step(ClassBatch(images, labels), 0)
    codes = module.codes(images)
    mined = miners.BatchEasyHardMiner()(codes, labels)
    assert not torch.allclose(loss, dsh_all_pairs_loss(codes, labels, 12.0, 0.01))
    assert torch.allclose(loss, module.loss(codes, labels, mined))
    with pytest.raises(CbirError, match="miner is 'hard', not an object"):
        _dsh(miner="hard")


def test_a_pml_loss_and_class_proxies_train_a_koch_net():
    torch.manual_seed(0)
    net = KochSiameseNet(input_size=12, channels=(4, 4), kernel_sizes=(3, 3), padding=1, embedding_dim=8)
    proxies = ProxySoftmaxLoss(num_classes=3, embedding_dim=8)
    module = SiameseModule(
        net, batch_loss=losses.ContrastiveLoss(), class_loss=proxies, class_loss_weight=0.5
    )
    images, labels = torch.rand(6, 1, 12, 12), torch.tensor([0, 0, 1, 1, 2, 2])
    loss = module.training_step(ClassBatch(images, labels), 0)
    e = net.embed(images)
    assert torch.allclose(loss, losses.ContrastiveLoss()(e, labels) + 0.5 * proxies(e, labels))
    assert id(proxies.proxies) in {id(p) for g in module.param_groups() for p in g["params"]}
    with pytest.raises(CbirError, match="class_loss needs class batches"):
        module.training_step(PairBatch(images[:3], images[3:], torch.tensor([1.0, 0.0, 1.0])), 0)
    alone = SiameseModule(net, batch_loss=None, class_loss=ProxySoftmaxLoss(num_classes=3, embedding_dim=8))
    with pytest.raises(CbirError, match="tuple batches need a loss, not only a class_loss"):
        alone.training_step(TupleBatch([list(images[:3])]), 0)


def test_pairs_are_embedded_as_two_towers():
    """``first`` and ``second`` in separate passes: a BatchNorm net normalises each side by its own
    statistics (one pass over both would give other codes)."""
    module = _dsh()
    images, same = _images(), torch.tensor([1.0, 0.0, 1.0])
    loss = module.training_step(PairBatch(images[:3], images[3:], same), 0)
    first, second = module.codes(images[:3]), module.codes(images[3:])
    assert torch.allclose(loss, dsh_pair_loss(first, second, same, 12.0, 0.01), atol=1e-6)
    joint = module.codes(images)
    assert not torch.allclose(loss, dsh_pair_loss(joint[:3], joint[3:], same, 12.0, 0.01), atol=1e-6)
