"""Losses and miners as objects with pytorch-metric-learning's call, the modules' defaults, named batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch.utils.data import DataLoader

from cbir_lightning.contracts import ClassBatch, EvalBatch, PairBatch, TupleBatch
from cbir_lightning.errors import CbirError
from cbir_lightning.losses import (
    AllPairsBCELoss,
    CirtorchContrastiveLoss,
    DSHLoss,
    InBatchSoftmaxLoss,
    ModelSimilarity,
    PairBCELoss,
)
from cbir_lightning.losses.contrastive import all_pairs_contrastive_loss, tuple_contrastive_loss, tuple_pairs
from cbir_lightning.losses.dsh import dsh_all_pairs_loss, dsh_pair_loss
from cbir_lightning.losses.pair_bce import all_pairs_bce, all_pairs_softmax, pair_bce
from cbir_lightning.losses.pairs import indices_to_pairs, pairs_to_indices
from cbir_lightning.models import DSHModule, GeMSiameseModule, KochSiameseNet, SiameseModule
from data_modules.datasets.indexed_images import IndexedImages
from data_modules.sampling.pairs import ClassBatchDataset, PairDataset
from data_modules.sampling.tuples import collate_tuples
from data_modules.transforms.normalize import NormalizedItems


def _koch() -> KochSiameseNet:
    torch.manual_seed(0)
    return KochSiameseNet(input_size=12, channels=(4, 4), kernel_sizes=(3, 3), padding=1, embedding_dim=8)


def _dot() -> ModelSimilarity:
    return ModelSimilarity(lambda a, b: (a * b).sum(1), lambda q, d: q @ d.T)


# ---- pairs of an indices tuple ------------------------------------------------------------------
def test_indices_to_pairs_orders_by_anchor_then_other_and_converts_triplets():
    indices = (torch.tensor([2, 0]), torch.tensor([3, 1]), torch.tensor([0, 2]), torch.tensor([3, 2]))
    anchors, others, targets = indices_to_pairs(indices, torch.arange(4))
    # pairs (2,3)+ (0,1)+ (0,3)- (2,2)-, sorted by (anchor, other)
    assert anchors.tolist() == [0, 0, 2, 2] and others.tolist() == [1, 3, 2, 3]
    assert targets.tolist() == [1.0, 0.0, 0.0, 1.0]
    triplets = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    anchors, others, targets = indices_to_pairs(triplets, torch.tensor([0, 0, 1]))
    assert (anchors.tolist(), others.tolist(), targets.tolist()) == ([0, 0], [1, 2], [1.0, 0.0])


def test_pairs_round_trip_keeps_the_batch_order():
    anchors, others, targets = tuple_pairs([3, 4])
    back = indices_to_pairs(pairs_to_indices(anchors, others, targets), torch.arange(7))
    assert [x.tolist() for x in back] == [anchors.tolist(), others.tolist(), targets.tolist()]


# ---- hand-computed cases ------------------------------------------------------------------------
def test_cirtorch_contrastive_loss_by_hand():
    e = torch.tensor([[0.0, 0.0], [0.3, 0.4], [0.0, 0.2]])  # d(0,1) = 0.5, d(0,2) = 0.2
    indices = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    loss = CirtorchContrastiveLoss(margin=0.7, eps=0.0)(e, torch.arange(3), indices)
    assert loss.item() == pytest.approx(0.5 * 0.5**2 + 0.5 * (0.7 - 0.2) ** 2)


def test_pair_bce_loss_by_hand_on_given_scores():
    e = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])  # dot products: (0,1) = 1, (0,2) = 0
    indices = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    loss = PairBCELoss(_dot())(e, torch.arange(3), indices)
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 - 0.5)) / 2
    assert loss.item() == pytest.approx(expected)


def test_dsh_loss_by_hand():
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # ||b1 - b2||^2 = 4, regulariser 0
    pos = (torch.tensor([0]), torch.tensor([1]), torch.tensor([], dtype=torch.long), torch.tensor([]).long())
    neg = (torch.tensor([], dtype=torch.long), torch.tensor([]).long(), torch.tensor([0]), torch.tensor([1]))
    labels = torch.tensor([0, 1])
    assert DSHLoss(margin=6.0)(b, labels, pos).item() == pytest.approx(0.5 * 4)
    assert DSHLoss(margin=6.0)(b, labels, neg).item() == pytest.approx(0.5 * (6 - 4))


def test_score_losses_on_a_class_batch_by_hand():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # s: (0,1) = 1, (0,2) = (1,2) = 0
    labels = torch.tensor([0, 0, 1])
    # softmax: pairs (0,1), (1,0), each -log(e^1 / (e^1 + e^0))
    assert InBatchSoftmaxLoss(_dot())(e, labels).item() == pytest.approx(math.log(1 + math.exp(-1)))
    bce_pos = -math.log(1 / (1 + math.exp(-1.0)))
    bce_neg = -math.log(0.5)
    assert AllPairsBCELoss(_dot())(e, labels).item() == pytest.approx((bce_pos + bce_neg) / 2)


# ---- against the pure functions, bit for bit ----------------------------------------------------
def test_contrastive_object_equals_the_pure_functions():
    torch.manual_seed(1)
    e, labels = F.normalize(torch.randn(10, 5), dim=1), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    loss = CirtorchContrastiveLoss(0.85)
    assert torch.equal(loss(e, labels), all_pairs_contrastive_loss(e, labels, 0.85))
    sizes = [4, 3, 3]
    anchors, others, targets = tuple_pairs(sizes)
    got = loss(e, torch.arange(10), pairs_to_indices(anchors, others, targets))
    assert torch.equal(got, tuple_contrastive_loss(e, sizes, 0.85))


def test_dsh_object_equals_the_pure_functions():
    torch.manual_seed(2)
    codes, labels = torch.randn(8, 6), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert torch.equal(DSHLoss()(codes, labels), dsh_all_pairs_loss(codes, labels))
    b1, b2, same = codes[:4], codes[4:], torch.tensor([1.0, 0.0, 0.0, 1.0])
    indices = pairs_to_indices(torch.arange(4), torch.arange(4, 8), same)
    assert torch.equal(
        DSHLoss(None, 0.05)(codes, torch.arange(8), indices), dsh_pair_loss(b1, b2, same, None, 0.05)
    )


def test_koch_losses_equal_the_pure_functions_on_the_net_head():
    net = _koch()
    head = ModelSimilarity(net.pair_logits, net.similarity)
    e, labels = torch.rand(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.equal(AllPairsBCELoss(head)(e, labels), all_pairs_bce(net.similarity(e, e), labels))
    assert torch.equal(InBatchSoftmaxLoss(head)(e, labels), all_pairs_softmax(net.similarity(e, e), labels))
    same = torch.tensor([1.0, 0.0, 1.0])
    indices = pairs_to_indices(torch.arange(3), torch.arange(3, 6), same)
    expected = pair_bce(net.pair_logits(e[:3], e[3:]), same)
    assert torch.equal(PairBCELoss(head)(e, torch.arange(6), indices), expected)


def test_pml_losses_take_the_same_call():
    torch.manual_seed(3)
    e, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    miner = pml_miners.MultiSimilarityMiner()
    mined = miner(e, labels)
    loss = pml_losses.MultiSimilarityLoss()(e, labels, mined)
    assert torch.isfinite(loss)


def test_score_losses_need_a_similarity_and_class_batches():
    with pytest.raises(CbirError, match="needs a similarity"):
        InBatchSoftmaxLoss()(torch.rand(4, 2), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(CbirError, match="PairBCELoss"):
        AllPairsBCELoss(_dot())(torch.rand(2, 2), torch.arange(2), (torch.tensor([0]),) * 4)


# ---- modules: every loss called alike, same numbers as the formulas -----------------------------
def test_siamese_module_steps_equal_the_formulas():
    net = _koch()
    module = SiameseModule(net, batch_loss=InBatchSoftmaxLoss())
    x1, x2, same = torch.rand(3, 1, 12, 12), torch.rand(3, 1, 12, 12), torch.tensor([1.0, 0.0, 1.0])
    expected = pair_bce(net.pair_logits(net.embed(x1), net.embed(x2)), same)
    assert torch.equal(module.training_step(PairBatch(x1, x2, same), 0), expected)
    images, labels = torch.rand(4, 1, 12, 12), torch.tensor([0, 0, 1, 1])
    e = net.embed(images)
    expected = all_pairs_softmax(net.similarity(e, e), labels)
    assert torch.equal(module.training_step(ClassBatch(images, labels), 0), expected)
    with pytest.raises(TypeError, match="ClassBatch, FeatureBatch, PairBatch or TupleBatch, got tuple"):
        module.training_step((images, labels), 0)


def test_module_state_dicts_hold_no_loss_or_duplicate_net_keys():
    koch = SiameseModule(_koch(), batch_loss=InBatchSoftmaxLoss())
    assert all(key.startswith("net.") for key in koch.state_dict())
    gem = GeMSiameseModule(backbone="resnet18", whitening=8)
    prefixes = {key.split(".")[0] for key in gem.state_dict()}
    assert prefixes == {"backbone", "pool", "whiten"}  # the keys of checkpoints saved before GeMNet


def test_dot_product_similarity_flags():
    assert SiameseModule(_koch()).dot_product_similarity is False
    assert GeMSiameseModule(backbone="resnet18").dot_product_similarity is True
    assert DSHModule(bits=4, input_size=8, channels=(2,), hidden=4).dot_product_similarity is True


def test_objects_from_python_are_not_hyperparameters():
    module = SiameseModule(_koch(), batch_loss=InBatchSoftmaxLoss(), lr_scheduler_interval="step")
    assert "net" not in module.hparams and "batch_loss" not in module.hparams
    assert module.lr_scheduler_interval == "step" and module.hparams.lr_scheduler_interval == "step"


# ---- default losses: objects, one per module; names are the converter's ---------------------------
def test_default_losses_are_objects_of_each_module():
    first, second = SiameseModule(_koch()), SiameseModule(_koch())
    assert type(first.loss) is AllPairsBCELoss and first.loss is not second.loss
    assert first.loss.distance is not second.loss.distance  # each scores with its own net
    gem = GeMSiameseModule(backbone="resnet18")
    assert type(gem.loss) is CirtorchContrastiveLoss and gem.loss.margin == 0.7 and gem.miner is None
    miner = pml_miners.MultiSimilarityMiner()
    gem = GeMSiameseModule(backbone="resnet18", loss=pml_losses.MultiSimilarityLoss(), miner=miner)
    assert gem.miner is miner
    dsh = DSHModule(bits=4, input_size=8, channels=(2,), hidden=4, margin=5.0)
    assert type(dsh.loss) is DSHLoss and (dsh.loss.margin, dsh.loss.alpha) == (5.0, 0.01)
    with pytest.raises(CbirError, match="margin and alpha"):
        DSHModule(bits=4, input_size=8, channels=(2,), hidden=4, loss=DSHLoss(), alpha=0.1)


def test_loss_names_are_refused_with_one_line():
    with pytest.raises(CbirError, match=r"batch_loss is 'softmax', not an object.*cbir-lightning convert"):
        SiameseModule(_koch(), batch_loss="softmax")
    with pytest.raises(CbirError, match=r"loss is 'pml_triplet', not an object"):
        GeMSiameseModule(backbone="resnet18", loss="pml_triplet")
    with pytest.raises(TypeError, match="margin"):
        GeMSiameseModule(backbone="resnet18", loss=pml_losses.TripletMarginLoss(), margin=0.3)


# ---- named batches from the datasets ------------------------------------------------------------
def test_datasets_yield_named_batches_and_collate_keeps_them():
    images = torch.randint(0, 255, (8, 1, 6, 6), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pairs = PairDataset(images, labels, 4, 0, None)
    assert isinstance(pairs[0], PairBatch)
    batch = next(iter(DataLoader(pairs, batch_size=4)))
    assert isinstance(batch, PairBatch) and batch.first.shape == (4, 1, 6, 6)
    classes = ClassBatchDataset(images, labels, 2, 0, None, classes_per_batch=2, samples_per_class=2)
    batch = next(iter(DataLoader(classes, batch_size=None)))
    assert isinstance(batch, ClassBatch) and batch.images.shape == (4, 1, 6, 6)
    evaluation = next(iter(DataLoader(IndexedImages(images, labels), batch_size=3)))
    assert isinstance(evaluation, EvalBatch) and evaluation.indices.tolist() == [0, 1, 2]
    tuples = collate_tuples([[torch.rand(3, 4, 4)] * 3, [torch.rand(3, 5, 5)] * 2])
    assert isinstance(tuples, TupleBatch) and [len(t) for t in tuples.tuples] == [3, 2]


def test_normalized_items_keep_the_batch_type():
    images = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8)
    item = NormalizedItems(IndexedImages(images, torch.tensor([0, 1])), [0.5] * 3, [0.25] * 3)[1]
    assert isinstance(item, EvalBatch) and item.indices.item() == 1


def test_aligned_pairs_by_hand():
    from cbir_lightning.losses.pairs import aligned_pairs

    labels, (a1, p, a2, n) = aligned_pairs(torch.tensor([1, 0, 1]))
    assert labels.tolist() == [0, 1, 2, 0, 4, 2]  # rows 3 and 5 match rows 0 and 2; row 4 matches none
    assert (a1.tolist(), p.tolist(), a2.tolist(), n.tolist()) == ([0, 2], [3, 5], [1], [4])
