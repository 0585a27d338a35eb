"""GeMSiameseModule, backbones, the paper's contrastive loss, PML losses and multi-scale descriptors,
checked against hand computations, cirtorch's formula, pytorch-metric-learning and the formulas."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from cbir_lightning.contracts import ClassBatch, PairBatch, TupleBatch
from cbir_lightning.errors import CbirError
from cbir_lightning.inference import embed_grouped
from cbir_lightning.losses import CirtorchContrastiveLoss
from cbir_lightning.losses.contrastive import (
    all_pairs_contrastive_loss,
    contrastive_loss,
    pair_distances,
    tuple_contrastive_loss,
)
from cbir_lightning.models import backbones
from cbir_lightning.models.backbones import Backbone
from cbir_lightning.models.gem_module import GeMSiameseModule
from cbir_lightning.models.multiscale import combine_scales, multiscale_embed
from cbir_lightning.whitening import apply_whitening, learn_pca, save_whitening

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- losses ---------------------------------------------------------------------------------------


def test_contrastive_loss_hand_computed():
    d = torch.tensor([0.3, 0.5, 0.9])
    y = torch.tensor([1, 0, 0])
    # 0.5 * 0.3^2 + 0.5 * (0.7 - 0.5)^2 + 0 (0.9 beyond the margin)
    assert torch.isclose(contrastive_loss(d, y, 0.7), torch.tensor(0.045 + 0.02))
    assert torch.isclose(contrastive_loss(d, y, 1.0), torch.tensor(0.045 + 0.125 + 0.005))


def _cirtorch_contrastive(x, label, margin=0.7, eps=1e-6):
    """cirtorch.layers.functional.contrastive_loss as published: x is D x N, labels -1 (q), 1, 0."""
    dim = x.size(0)
    nq = torch.sum(label == -1)
    S = x.size(1) // nq
    x1 = x[:, ::S].permute(1, 0).repeat(1, S - 1).view((S - 1) * nq, dim).permute(1, 0)
    idx = [i for i in range(len(label)) if label[i] != -1]
    x2 = x[:, idx]
    lbl = label[label != -1]
    D = torch.pow(x1 - x2 + eps, 2).sum(dim=0).sqrt()
    y = 0.5 * lbl * torch.pow(D, 2) + 0.5 * (1 - lbl) * torch.pow(torch.clamp(margin - D, min=0), 2)
    return torch.sum(y)


def test_tuple_loss_matches_cirtorch():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(3 * 7, 16), dim=1)  # 3 tuples (q, p, n1..n5)
    label = torch.tensor([-1, 1, 0, 0, 0, 0, 0] * 3, dtype=torch.float32)
    for margin in (0.7, 0.85, 1.4):
        ours = tuple_contrastive_loss(x, [7, 7, 7], margin)
        assert torch.isclose(ours, _cirtorch_contrastive(x.T, label, margin), rtol=1e-5)


def test_paper_loss_differs_from_pml_contrastive():
    """Same pairs, same margin: the paper squares and sums; PML uses plain distances, averages the
    non-zero positive terms and the non-zero negative terms separately and adds the two means."""
    torch.manual_seed(1)
    emb = F.normalize(torch.randn(6, 4), dim=1)
    a1, p = torch.tensor([0, 3]), torch.tensor([1, 4])
    a2, n = torch.tensor([0, 0, 3]), torch.tensor([2, 5, 5])
    d_pos = (emb[a1] - emb[p]).norm(dim=1)
    d_neg = (emb[a2] - emb[n]).norm(dim=1)
    neg_terms = (2.0 - d_neg).clamp(min=0)
    assert torch.all(neg_terms > 0) and torch.all(d_pos > 0)
    pml_expected = d_pos.mean() + neg_terms.mean()
    pml = losses.ContrastiveLoss(pos_margin=0, neg_margin=2.0)(emb, torch.arange(6), (a1, p, a2, n))
    assert torch.isclose(pml, pml_expected, rtol=1e-5)
    paper = 0.5 * d_pos.pow(2).sum() + 0.5 * neg_terms.pow(2).sum()
    ours = contrastive_loss(torch.cat([d_pos, d_neg]), torch.tensor([1, 1, 0, 0, 0]), 2.0)
    assert torch.isclose(ours, paper, rtol=1e-5)
    assert not torch.isclose(ours, pml, rtol=1e-2)


def test_all_pairs_loss_brute_force():
    torch.manual_seed(2)
    emb, labels = torch.randn(5, 3), torch.tensor([0, 1, 0, 2, 1])
    expected = sum(
        contrastive_loss(pair_distances(emb[i : i + 1], emb[j : j + 1]), (labels[i] == labels[j])[None], 0.7)
        for i in range(5)
        for j in range(i + 1, 5)
    )
    assert torch.isclose(all_pairs_contrastive_loss(emb, labels), expected)


# ---- multi-scale ----------------------------------------------------------------------------------


def test_combine_scales_formula():
    v = torch.tensor([[[0.6, 0.8]], [[1.0, 0.0]], [[0.0, 1.0]]])  # 3 scales, 1 image, 2-d
    p = 3.0
    mean = torch.tensor([[(0.6**3 + 1.0 + 0.0) / 3, (0.8**3 + 0.0 + 1.0) / 3]]) ** (1 / p)
    expected = mean / mean.norm()
    assert torch.allclose(combine_scales(v, p), expected, atol=1e-6)
    assert torch.allclose(combine_scales(v, 1.0), F.normalize(v.mean(0), dim=1))


def test_multiscale_embed_resizes_each_scale():
    seen = []

    def embed(images):
        seen.append(tuple(images.shape[-2:]))
        return F.normalize(
            images.mean(dim=(1, 2, 3))[:, None].expand(-1, 2) + torch.tensor([1.0, 0.0]), dim=1
        )

    x = torch.rand(2, 3, 40, 40)
    out = multiscale_embed(embed, x, [1, 0.7071, 0.5], p=3.0)
    assert seen == [(40, 40), (28, 28), (20, 20)] and out.shape == (2, 2)
    seen.clear()
    assert torch.equal(multiscale_embed(embed, x, [1.0], p=3.0), embed(x))


# ---- backbones ------------------------------------------------------------------------------------


def test_backbone_feature_maps_and_weights_file(tmp_path):
    torch.manual_seed(0)
    net = Backbone("resnet18")
    assert net.channels == 512 and net(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    assert Backbone("efficientnet_b1").channels == 1280
    import torchvision

    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    loaded = Backbone("resnet18", str(tmp_path / "r18.pth"))
    assert torch.equal(loaded.features[0].weight, reference.conv1.weight)
    with pytest.raises(CbirError, match="weights file .*missing.pth not found"):
        Backbone("resnet18", str(tmp_path / "missing.pth"))
    with pytest.raises(CbirError, match="unknown backbone 'alexnet'"):
        Backbone("alexnet")
    with pytest.raises(CbirError, match="IMAGENET1K_V1"):
        Backbone("resnet18", "IMAGENET_BEST")


def test_offline_weights_error_names_cache_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(backbones, "download_state_dict", offline)
    with pytest.raises(CbirError) as err:
        Backbone("resnet18", "IMAGENET1K_V1")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_frozen_batchnorm_stays_frozen_in_train_mode():
    net = Backbone("resnet18", freeze_batchnorm=True).train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = bns[0].running_mean.clone()
    net(torch.rand(2, 3, 32, 32))
    assert all(not m.training for m in bns) and all(not p.requires_grad for m in bns for p in m.parameters())
    assert torch.equal(bns[0].running_mean, before)
    assert net.features[0].weight.requires_grad


# ---- module ---------------------------------------------------------------------------------------


def _module(**kwargs) -> GeMSiameseModule:
    torch.manual_seed(0)
    return GeMSiameseModule(backbone="resnet18", weights=None, **kwargs)


def test_embed_similarity_and_grey_images():
    module = _module().eval()
    grey = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        e = module.embed(grey)
        assert e.shape == (3, 512) and torch.allclose(e.norm(dim=1), torch.ones(3))
        assert torch.allclose(e, module.embed(grey.expand(-1, 3, -1, -1)))
        x = F.adaptive_avg_pool2d(module.backbone(grey.expand(-1, 3, -1, -1)).clamp(min=1e-6).pow(3), 1)
        assert torch.allclose(e, F.normalize(x.flatten(1).pow(1 / 3), dim=1), atol=1e-5)
        assert torch.allclose(module.similarity(e, e[:2]), e @ e[:2].T)


def test_tuple_batch_grouped_by_size_and_paper_loss():
    module = _module(loss=CirtorchContrastiveLoss(0.85)).eval()  # eval: BatchNorm independent of grouping
    torch.manual_seed(3)
    tuples = [[torch.rand(3, 40, 32) for _ in range(4)], [torch.rand(3, 32, 40) for _ in range(4)]]
    tuples[1][2] = torch.rand(3, 40, 32)  # sizes mixed inside a tuple too
    with torch.no_grad():
        single = torch.cat([module.embed(img[None]) for t in tuples for img in t])
        grouped = embed_grouped(module.embed, [img for t in tuples for img in t])
        assert torch.allclose(grouped, single, atol=1e-5)
        loss = module.training_step(TupleBatch(tuples), 0)
    label = torch.tensor([-1, 1, 0, 0] * 2, dtype=torch.float32)
    assert torch.isclose(loss, _cirtorch_contrastive(single.T, label, 0.85), rtol=1e-4)


def test_pair_and_class_batches():
    module = _module().eval()
    torch.manual_seed(4)
    x1, x2, same = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32), torch.tensor([1.0, 0.0, 1.0])
    with torch.no_grad():
        loss = module.training_step(PairBatch(x1, x2, same), 0)
        expected = contrastive_loss(pair_distances(module.embed(x1), module.embed(x2)), same, 0.7)
        assert torch.isclose(loss, expected, rtol=1e-5)
        images, labels = torch.rand(6, 1, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2])
        emb = module.embed(images)
        assert torch.isclose(
            module.training_step(ClassBatch(images, labels), 0), all_pairs_contrastive_loss(emb, labels)
        )
    pml = _module(loss=losses.MultiSimilarityLoss(), miner=miners.MultiSimilarityMiner(epsilon=0.5)).eval()
    with torch.no_grad():
        emb = pml.embed(images)
        mined = miners.MultiSimilarityMiner(epsilon=0.5)(emb, labels)
        expected = losses.MultiSimilarityLoss()(emb, labels, mined)
        assert torch.isclose(pml.training_step(ClassBatch(images, labels), 0), expected)


def test_gem_p_param_group():
    module = _module(whitening=32)
    groups = module.param_groups()
    assert groups[1]["params"] == [module.pool.p] and groups[1]["lr_scale"] == 10.0
    assert groups[1]["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in module.parameters()) and len(set(ids)) == len(ids)
    module.optimizer_factory = lambda params: torch.optim.SGD(params, lr=0.01, weight_decay=1e-4)
    optimizer = module.configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.1])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]


def test_whitening_layer_from_file_and_post_hoc(tmp_path):
    plain = _module().eval()
    images = torch.rand(12, 3, 32, 32)
    with torch.no_grad():
        raw = plain.embed(images)
    w = learn_pca(raw.double(), dim=8)
    save_whitening(tmp_path / "w.whitening.pt", w)
    layered = _module(whitening_init=str(tmp_path / "w.whitening.pt")).eval()
    with torch.no_grad():
        assert torch.allclose(layered.embed(images), apply_whitening(raw, w), atol=1e-4)
        assert layered.whiten.out_features == 8
        plain.attach_whitening(w)
        assert torch.allclose(plain.embed(images), apply_whitening(raw, w), atol=1e-5)
        assert torch.allclose(plain.descriptor(images), raw, atol=1e-6)
    save_whitening(tmp_path / "small.whitening.pt", learn_pca(torch.randn(20, 8)))
    with pytest.raises(CbirError, match="whitening_init .*small.whitening.pt is for 8-d descriptors"):
        _module(whitening_init=str(tmp_path / "small.whitening.pt"))
    with pytest.raises(CbirError, match="missing.whitening.pt not found"):
        _module(whitening_init=str(tmp_path / "missing.whitening.pt"))
    with pytest.raises(CbirError, match="loss is 'arcface', not an object"):
        _module(loss="arcface")


def test_tuples_with_pml_contrastive_use_exact_pairs():
    module = _module(loss=losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.7)).eval()
    torch.manual_seed(5)
    tuples = [[torch.rand(3, 32, 32) for _ in range(3)] for _ in range(2)]
    with torch.no_grad():
        emb = embed_grouped(module.embed, [img for t in tuples for img in t])
        loss = module.training_step(TupleBatch(tuples), 0)
    d = lambda i, j: (emb[i] - emb[j]).norm()  # noqa: E731
    pos = torch.stack([d(0, 1), d(3, 4)])
    neg = torch.stack([(0.7 - d(0, 2)).clamp(min=0), (0.7 - d(3, 5)).clamp(min=0)])
    assert torch.all(neg > 0)
    assert torch.isclose(loss, pos.mean() + neg.mean(), rtol=1e-4)


def test_checkpoint_reloads_without_its_pretrained_weights_file(tmp_path):
    """The backbone's pretrained file is read once, at training; a checkpoint carries the weights, so it
    loads on a machine without that file (or offline), with identical embeddings."""
    import pytorch_lightning as pl
    import torchvision

    from cbir_lightning.checkpoints import load_module

    weights = tmp_path / "resnet18-local.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    module = GeMSiameseModule(backbone="resnet18", weights=str(weights), whitening=8).eval()
    ckpt = tmp_path / "model.ckpt"
    hparams = {**module.hparams, "_class_path": "cbir_lightning.models.GeMSiameseModule"}
    saved = {"state_dict": module.state_dict(), "hyper_parameters": hparams}
    module.on_save_checkpoint(saved)  # the checkpoint names no pretrained file
    assert saved["hyper_parameters"]["weights"] is None
    torch.save({**saved, "pytorch-lightning_version": pl.__version__}, ckpt)
    weights.unlink()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_module(ckpt).embed(images), module.embed(images), atol=1e-6)
