"""DDP hard-negative mining: 2 gloo processes mine the single-process tuples and split them."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers.ddp import free_port, init_gloo
from helpers.mining import Stub, synthetic

from data_modules.sampling.mining import mine_tuples
from data_modules.sampling.tuples import TupleSampler


def _ddp_worker(rank, world, port, out):
    init_gloo(rank, world, port)
    images, clusters, q, p = synthetic()
    result = mine_tuples(
        Stub(), images, clusters, q, p, query_size=11, pool_size=31, neg_num=3, seed=5, epoch=1
    )
    sampler = TupleSampler(11, lambda epoch: result.tuples)
    out[rank] = (result.tuples, list(sampler))
    dist.destroy_process_group()


def test_ddp_ranks_mine_the_single_process_tuples_and_split_them():
    images, clusters, q, p = synthetic()
    single = mine_tuples(
        Stub(), images, clusters, q, p, query_size=11, pool_size=31, neg_num=3, seed=5, epoch=1
    )
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, free_port(), out), nprocs=2, join=True)
        out = dict(out)
    for rank in (0, 1):
        assert torch.equal(out[rank][0], single.tuples)
    shares = [out[r][1] for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 5  # 11 tuples, drop_last over 2 ranks
    assert sorted(shares[0] + shares[1]) == sorted(tuple(t) for t in single.tuples[:10].tolist())
