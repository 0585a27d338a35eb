"""Evaluation set made of separate queries and database (e.g. CIFAR-10 hashing protocol: query = test,
database = train).

The evaluation dataset holds the queries first, then the database; ``is_query`` marks them. A DataModule
exposes it as ``retrieval_split`` and :class:`~cbir_lightning.callbacks.RetrievalMetrics` then scores
each query against the database only (instead of every item against all others).
"""

from __future__ import annotations

import torch

from data_modules.datasets.indexed_images import IndexedImages


def query_database_items(
    queries: torch.Tensor, query_labels: torch.Tensor, database: torch.Tensor, database_labels: torch.Tensor
) -> tuple[IndexedImages, torch.Tensor]:
    """``(dataset of (image, label, index) items, is_query BoolTensor [nq + nd])``."""
    images = torch.cat([queries, database])
    labels = torch.cat([query_labels, database_labels])
    is_query = torch.zeros(len(images), dtype=torch.bool)
    is_query[: len(queries)] = True
    return IndexedImages(images, labels), is_query


def balanced_pairs(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Up to ``count`` distinct same-label index pairs ``[P, 2]`` (i < j), drawn reproducibly.

    Memory is the number of same-label pairs (per class ``c (c - 1) / 2``), not ``n^2``: a large
    collection of small classes is fine.
    """
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    per_class = [torch.combinations(members, 2) for members in torch.split(order, counts.tolist())]
    pairs = torch.cat([p for p in per_class if len(p)] or [torch.zeros(0, 2, dtype=torch.long)])
    # members are in index order within a class, so i < j; sort rows as triu(same).nonzero() lists them
    pairs = pairs[torch.argsort(pairs[:, 0] * len(labels) + pairs[:, 1])]
    if len(pairs) > count:
        gen = torch.Generator().manual_seed(int(seed))
        pairs = pairs[torch.randperm(len(pairs), generator=gen)[:count].sort().values]
    return pairs
