"""Hard-negative mining for (query, positive, negatives) tuples, as in Radenović et al. / cirtorch's
``TuplesDataset.create_epoch_tuples``.

Every epoch: draw ``query_size`` (q, p) pairs and a pool of ``pool_size`` images (both seeded by
``(seed, epoch)``), embed the queries and the pool with the current model's single-scale ``descriptor``
(or ``embed``) through :func:`cbir_lightning.inference.embed_dataset` (eval mode, no grad, modes
restored afterwards), and for each query go down the pool by decreasing dot product (= increasing
distance for L2-normalised descriptors; ties: lower pool position first) keeping an image when its
cluster is neither the query's nor one already taken, until ``neg_num`` negatives are found.

Under DDP every rank embeds a shard of the images and the descriptors are all-gathered (``embed_dataset``),
so every rank mines the same tuples; the tuple sampler then gives each rank its share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from cbir_lightning.errors import CbirError
from cbir_lightning.inference import embed_dataset
from data_modules.sampling.samplers import item_generator


@dataclass
class MinedTuples:
    tuples: torch.Tensor  # [Q, 2 + neg_num] image indices: query, positive, negatives (hardest first)
    neg_distance: float  # mean L2 distance between the queries and their negatives (nan if none)


def draw_epoch(
    num_pairs: int, num_images: int, query_size: int, pool_size: int, seed: int, epoch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the (q, p) pair list and pool image indices for one epoch (random, without repeats)."""
    gen = item_generator(seed, epoch)
    rows = torch.randperm(num_pairs, generator=gen)[: min(query_size, num_pairs)]
    pool = torch.randperm(num_images, generator=gen)[: min(pool_size, num_images)]
    return rows, pool


def hardest_negatives(
    query_vecs: torch.Tensor,
    pool_vecs: torch.Tensor,
    query_clusters: torch.Tensor,
    pool_clusters: torch.Tensor,
    neg_num: int,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool positions ``[Q, neg_num]`` of each query's hardest negatives (cluster rules above) and their
    L2 distances to the query. CbirError if some query's pool holds fewer than ``neg_num`` other clusters."""
    nq = len(query_vecs)
    positions = torch.empty(nq, neg_num, dtype=torch.long, device=pool_vecs.device)
    pool_clusters = pool_clusters.to(pool_vecs.device)
    query_clusters = query_clusters.to(pool_vecs.device)
    for start in range(0, nq, chunk_size):
        q = query_vecs[start : start + chunk_size]
        order = torch.sort(q @ pool_vecs.T, dim=1, descending=True, stable=True).indices
        ranked = pool_clusters[order]  # clusters in rank order, per query
        by_cluster = torch.sort(ranked, dim=1, stable=True).indices  # same cluster together, by rank
        grouped = torch.gather(ranked, 1, by_cluster)
        first_sorted = torch.ones_like(grouped, dtype=torch.bool)
        first_sorted[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
        first = torch.zeros_like(first_sorted).scatter_(1, by_cluster, first_sorted)
        keep = first & (ranked != query_clusters[start : start + chunk_size, None])
        found = keep.sum(1)
        if bool((found < neg_num).any()):
            i = int(torch.nonzero(found < neg_num)[0])
            raise CbirError(
                f"query {start + i}: the mining pool of {len(pool_vecs)} images holds only {int(found[i])} "
                f"clusters other than the query's, fewer than neg_num={neg_num}; raise pool_size, lower "
                "neg_num or add clusters to the data"
            )
        pick = keep & (keep.cumsum(1) <= neg_num)
        positions[start : start + len(q)] = order[pick].view(len(q), neg_num)
    distances = torch.linalg.vector_norm(query_vecs[:, None] - pool_vecs[positions] + 1e-6, dim=-1)
    return positions, distances


def mine_tuples(
    model: nn.Module,
    images: Dataset,
    clusters: torch.Tensor,
    qidxs: torch.Tensor,
    pidxs: torch.Tensor,
    *,
    query_size: int,
    pool_size: int,
    neg_num: int,
    seed: int,
    epoch: int,
    batch_size: int = 32,
    num_workers: int = 0,
) -> MinedTuples:
    """One epoch of tuples (see the module docstring). ``images[i]`` is image ``i`` as a tensor;
    ``clusters[i]`` its cluster; ``qidxs``/``pidxs`` the matching pairs."""
    if neg_num < 0 or query_size < 1 or pool_size < neg_num:
        raise CbirError(
            f"mining needs query_size >= 1 and pool_size >= neg_num >= 0; got query_size={query_size}, "
            f"pool_size={pool_size}, neg_num={neg_num}"
        )
    rows, pool = draw_epoch(len(qidxs), len(clusters), query_size, pool_size, seed, epoch)
    queries, positives = qidxs[rows], pidxs[rows]
    if neg_num == 0:
        return MinedTuples(torch.stack([queries, positives], 1), float("nan"))
    unique, inverse = torch.unique(torch.cat([queries, pool]), return_inverse=True)
    # the model's mining descriptor (GeM: single scale, no post-hoc whitening)
    vecs = embed_dataset(
        model, images, unique, embed=model.descriptor, batch_size=batch_size, num_workers=num_workers
    )
    query_vecs, pool_vecs = vecs[inverse[: len(queries)]], vecs[inverse[len(queries) :]]
    positions, distances = hardest_negatives(
        query_vecs.float(), pool_vecs.float(), clusters[queries], clusters[pool], neg_num
    )
    negatives = pool[positions.cpu()]
    tuples = torch.cat([queries[:, None], positives[:, None], negatives], 1)
    return MinedTuples(tuples, float(distances.mean()))
