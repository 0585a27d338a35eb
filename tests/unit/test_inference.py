"""The one inference path (cbir_lightning.inference): modes restored, equal-size grouping and its order,
identical to a plain loop, whitening applied once (by the model), dataset order, and the DDP gather."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.ddp import free_port, init_gloo
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cbir_lightning.inference import (
    embed_dataset,
    embed_grouped,
    eval_mode,
    in_index_order,
    shape_groups,
)
from cbir_lightning.models import GeMSiameseModule
from cbir_lightning.whitening import apply_whitening, learn_pca
from cbir_lightning.whitening.fit import fit_whitening


class Stub(nn.Module):
    """Conv + BatchNorm + Dropout: eval and train mode give different embeddings."""

    post_whitening = None  # the model contract: no post-hoc whitening attached

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)

    def embed(self, x):
        return nn.functional.normalize(self.drop(self.bn(self.conv(x))).mean((2, 3)), dim=1)


class Means(nn.Module):
    """Row ``i`` depends on image ``i`` alone and exactly (channel means times a weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def embed(self, x):
        return x.mean((2, 3)) * self.weight


def images(n=9, seed=0, sizes=((6, 8), (6, 5), (4, 4))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(3, *sizes[i % len(sizes)], generator=gen) for i in range(n)]


def test_shape_groups_order():
    shapes = [(3, 2, 2), (3, 4, 4), (3, 2, 2), (1, 2, 2), (3, 4, 4)]
    assert shape_groups([torch.zeros(s) for s in shapes]) == [[0, 2], [1, 4], [3]]
    assert shape_groups([]) == []


def test_embed_grouped_one_call_per_size_rows_in_input_order():
    x = images(7)
    calls = []

    def embed(batch):
        calls.append(tuple(batch.shape))
        return batch.mean((2, 3))

    out = embed_grouped(embed, x)
    assert calls == [(3, 3, 6, 8), (2, 3, 6, 5), (2, 3, 4, 4)]
    assert torch.equal(out, torch.stack([image.mean((1, 2)) for image in x]))


def test_embed_grouped_keeps_gradients():
    model = Means()
    out = embed_grouped(model.embed, images(5))
    out.sum().backward()
    assert model.weight.grad is not None and out.requires_grad


def test_modes_and_grad_restored_also_on_error():
    model = Stub().train()
    model.bn.eval()  # a frozen BatchNorm inside a training model stays frozen
    data = images(6)
    out = embed_dataset(model, data, batch_size=4)
    assert not out.requires_grad
    assert model.training and model.conv.training and model.drop.training and not model.bn.training

    def fail(_):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        embed_dataset(model, data, embed=fail)
    assert model.training and model.drop.training and not model.bn.training and torch.is_grad_enabled()
    with eval_mode(model):
        assert not model.training and not torch.is_grad_enabled()
    assert model.training


def test_identical_to_a_plain_loop():
    model = Stub()
    data = images(10, sizes=((6, 8),))
    got = embed_dataset(model, data, batch_size=4)
    model.eval()
    with torch.no_grad():  # one size: exactly the batches a plain DataLoader gives
        plain = torch.cat([model.embed(batch) for batch in DataLoader(data, batch_size=4)])
    assert torch.equal(got, plain)
    mixed = images(10)
    idx = torch.tensor([5, 0, 3, 9, 1, 2])
    got = embed_dataset(model, mixed, idx, batch_size=4)
    with torch.no_grad():
        one_by_one = torch.cat([model.embed(mixed[int(i)][None]) for i in idx])
    assert torch.allclose(got, one_by_one, atol=1e-5)
    items = TensorDataset(torch.stack(data), torch.zeros(10), torch.arange(10))
    assert torch.equal(embed_dataset(model, items, batch_size=4), plain)


def test_any_embedding_function_labels_and_a_progress_bar(capsys):
    """The one route takes what maps a batch to vectors (a module, an object with ``embed`` such as an
    ONNX Runtime session's, a function), gives the items' labels in row order, and shows a titled bar."""
    model = Stub().eval()
    data = images(9)
    idx = torch.tensor([8, 1, 4, 0])
    expected = embed_dataset(model, data, idx, batch_size=3)

    class Session:  # as OnnxSearchModel: no nn.Module, CPU tensors in and out
        def embed(self, x):
            assert not torch.is_grad_enabled()
            with torch.no_grad():
                return model.embed(x)

    assert torch.equal(embed_dataset(Session(), data, idx, batch_size=3), expected)
    assert torch.equal(embed_dataset(model.embed, data, idx, batch_size=3), expected)
    labelled = [(image, -1 if i % 4 == 0 else 0) for i, image in enumerate(data)]
    vectors, labels = embed_dataset(Session(), labelled, idx, batch_size=3, progress="Embedding", labels=True)
    assert torch.equal(vectors, expected) and labels.tolist() == [-1, 0, -1, -1]
    assert "Embedding: 100%" in capsys.readouterr().out
    embed_dataset(model, data, batch_size=3)
    assert capsys.readouterr().out == ""  # no bar unless asked


def test_whitening_is_applied_once_by_the_model_and_set_aside_on_request():
    torch.manual_seed(0)
    module = GeMSiameseModule(backbone="resnet18", weights=None)
    data = images(6, sizes=((32, 32),))
    raw = embed_dataset(module, data)
    w = learn_pca(torch.randn(600, raw.shape[1]).double())
    module.attach_whitening(w)
    whitened = embed_dataset(module, data)
    assert torch.allclose(whitened, apply_whitening(raw, w), atol=1e-5)
    assert not torch.allclose(whitened, apply_whitening(whitened, w), atol=1e-3)  # not twice
    assert torch.equal(embed_dataset(module, data, whitening=False), raw)
    assert module.post_whitening is w  # set aside for the call only


def test_fit_whitening_restores_submodule_modes_and_takes_mixed_sizes():
    """(Before the shared path: ``train(True)`` put a frozen BatchNorm back in training, and images of
    different sizes could not be stacked by the default collate.)"""
    model = Stub().train()
    model.bn.eval()
    x = images(40, sizes=((6, 8), (8, 6)))
    data = [(image, 0, i) for i, image in enumerate(x)]
    pairs = torch.tensor([[i, i + 1] for i in range(0, 38, 2)])
    w = fit_whitening(model, data, pairs, "pca", batch_size=8)
    assert not model.bn.training and model.conv.training
    model.eval()
    with torch.no_grad():
        ref = torch.cat([model.embed(image[None]) for image in x])
    assert torch.allclose(w["mean"].float(), ref.mean(0), atol=1e-5)


def test_in_index_order_keeps_the_first_row_of_each_index():
    indices = torch.tensor([2, 0, 1, 0, 2])
    keep = in_index_order(indices)
    assert keep.tolist() == [1, 2, 0]
    assert indices[keep].tolist() == [0, 1, 2]


def _ddp_worker(rank, world, port, out):
    init_gloo(rank, world, port)
    data = images(7)
    idx = torch.tensor([6, 2, 4, 0, 5])  # 5 rows over 2 ranks: one padded row dropped
    labelled = [(image, 10 * i) for i, image in enumerate(data)]
    out[rank] = (
        embed_dataset(Means(), data, batch_size=2),
        embed_dataset(Means(), data, idx),
        embed_dataset(Means(), labelled, idx, labels=True)[1],
    )
    if rank == 0:  # this process alone (no collective): must not wait for rank 1
        out["alone"] = embed_dataset(Means(), data, distributed=False)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.integration  # two gloo processes
def test_ddp_gather_gives_every_rank_the_full_set_in_order():
    data = images(7)
    single = embed_dataset(Means(), data)
    idx = torch.tensor([6, 2, 4, 0, 5])
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, free_port(), out), nprocs=2, join=True)
        out = dict(out)
    for rank in (0, 1):
        assert torch.equal(out[rank][0], single)
        assert torch.equal(out[rank][1], single[idx])
        assert out[rank][2].tolist() == (10 * idx).tolist()  # labels gathered in row order too
    assert torch.equal(out["alone"], single)
