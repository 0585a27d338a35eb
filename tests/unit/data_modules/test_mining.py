"""Hard-negative mining against a brute-force reference, its cluster rules and reproducibility (DDP:
tests/integration/test_mining.py)."""

from __future__ import annotations

import pytest
import torch
from helpers.mining import Stub, synthetic
from torch import nn

from cbir_lightning.errors import CbirError
from data_modules.sampling.mining import draw_epoch, hardest_negatives, mine_tuples


def brute_force(qv, pv, qc, pc, k):
    """Per query: all pool distances, walk them in increasing order, apply the cluster rules."""
    out = []
    for i in range(len(qv)):
        dists = [float(((qv[i] - pv[j]) ** 2).sum().sqrt()) for j in range(len(pv))]
        taken, clusters = [], {int(qc[i])}
        for j in sorted(range(len(pv)), key=lambda j: (dists[j], j)):
            if int(pc[j]) not in clusters:
                taken.append(j)
                clusters.add(int(pc[j]))
            if len(taken) == k:
                break
        out.append(taken)
    return torch.tensor(out)


def clustered(n, clusters, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, clusters, (n,), generator=gen)
    centres = torch.randn(clusters, dim, generator=gen)
    x = centres[labels] + 0.8 * torch.randn(n, dim, generator=gen)
    return nn.functional.normalize(x, dim=1), labels * 10 + 7  # non-contiguous cluster ids


@pytest.mark.parametrize("chunk", [3, 256])
def test_hardest_negatives_match_brute_force(chunk):
    qv, qc = clustered(17, 6, seed=1)
    pv, pc = clustered(60, 6, seed=2)
    pos, dist_ = hardest_negatives(qv, pv, qc, pc, 4, chunk_size=chunk)
    assert torch.equal(pos, brute_force(qv, pv, qc, pc, 4))
    for i in range(len(qv)):
        got = pc[pos[i]].tolist()
        assert int(qc[i]) not in got and len(set(got)) == len(got)  # cluster rules, explicitly
        assert torch.allclose(dist_[i], (qv[i] - pv[pos[i]]).norm(dim=1), atol=1e-4)
        d = (qv[i] - pv).norm(dim=1)
        assert torch.all(d[pos[i]][1:] >= d[pos[i]][:-1])  # hardest first


def test_too_few_clusters_in_pool_is_one_line():
    qv, qc = clustered(4, 3)
    pv, pc = clustered(20, 3)
    with pytest.raises(CbirError, match="raise pool_size, lower neg_num"):
        hardest_negatives(qv, pv, qc, pc, 3)


def test_mine_tuples_reference_reproducible_and_restores_modes():
    images, clusters, q, p = synthetic()
    model = Stub().train()
    model.bn.eval()  # a frozen BatchNorm must stay frozen
    args = dict(query_size=10, pool_size=25, neg_num=3, seed=5, batch_size=4)
    a = mine_tuples(model, images, clusters, q, p, epoch=2, **args)
    assert model.training and model.conv.training and not model.bn.training
    assert torch.equal(a.tuples, mine_tuples(model, images, clusters, q, p, epoch=2, **args).tuples)
    assert not torch.equal(a.tuples, mine_tuples(model, images, clusters, q, p, epoch=3, **args).tuples)
    rows, pool = draw_epoch(len(q), len(clusters), 10, 25, 5, 2)
    assert torch.equal(a.tuples[:, 0], q[rows]) and torch.equal(a.tuples[:, 1], p[rows])
    model.eval()
    with torch.no_grad():
        qv = torch.cat([model.embed(images[int(i)][None]) for i in q[rows]])
        pv = torch.cat([model.embed(images[int(i)][None]) for i in pool])
    ref = pool[brute_force(qv, pv, clusters[q[rows]], clusters[pool], 3)]
    assert torch.equal(a.tuples[:, 2:], ref)
    expected = (
        (qv[:, None] - pv[brute_force(qv, pv, clusters[q[rows]], clusters[pool], 3)]).norm(dim=-1).mean()
    )
    assert a.neg_distance == pytest.approx(float(expected), abs=1e-4)


def test_mining_sizes_are_checked():
    images, clusters, q, p = synthetic()
    with pytest.raises(CbirError, match="pool_size >= neg_num"):
        mine_tuples(Stub(), images, clusters, q, p, query_size=4, pool_size=2, neg_num=3, seed=0, epoch=0)


