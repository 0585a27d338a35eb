"""Revisited Oxford / Paris evaluation (Radenović et al., "Revisiting Oxford and Paris", CVPR 2018).

Each query's ground truth lists database indices as ``easy``, ``hard`` and ``junk``. The three
protocols (as in the revisitop ``example_evaluate.py``):

=========  =================  =====================
protocol   positives          junk
=========  =================  =====================
easy       easy               junk + hard
medium     easy + hard        junk
hard       hard               junk + easy
=========  =================  =====================

As in revisitop's ``compute_map``: junk images are taken out of the ranking; queries without positives
are skipped; AP is the trapezoid-rule area under the precision-recall curve
(``ap += (precision_0 + precision_1) * recall_step / 2`` over the positives' ranks, junk removed);
``mP@k`` is precision at ``k' = min(k, rank of the last positive)``, i.e. when all positives are in the
top ``k`` it is divided by the last positive's rank, not by ``k``. The original Oxford5k / Paris6k
ground truth (``ok``, ``junk``) is scored by the same rule, with ``ok`` as the positives.
Ties in the ranking: lower database index first (revisitop's ``np.argsort`` leaves them unspecified).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cbir_lightning.metrics.retrieval import retrieval_metrics
from cbir_lightning.metrics.similarity import SimilarityFn

PROTOCOLS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
KAPPAS = (1, 5, 10)


def protocol_lists(gnd: Sequence[Mapping], protocol: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-query positive and junk index lists of one protocol (``easy``, ``medium``, ``hard``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    positive_keys, junk_keys = PROTOCOLS[protocol]
    positives = [np.concatenate([np.asarray(g[key], dtype=np.int64) for key in positive_keys]) for g in gnd]
    junk = [np.concatenate([np.asarray(g[key], dtype=np.int64) for key in junk_keys]) for g in gnd]
    return positives, junk


def gnd_map(
    query,
    database,
    positives: Sequence[Sequence[int]],
    junk: Sequence[Sequence[int]],
    *,
    kappas: Sequence[int] = KAPPAS,
    similarity: str | SimilarityFn = "dot",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """``{"mAP", "mP@k"...}`` by the revisitop rules for given positive/junk lists (fractions in [0, 1])."""
    result = retrieval_metrics(
        query,
        database,
        positives=positives,
        junk=junk,
        similarity=similarity,
        ks=tuple(kappas),
        chunk_size=chunk_size,
        ap_rule="trapezoid",
        mp_at_k=True,
    )
    return {"mAP": result["mAP"], **{f"mP@{k}": result[f"mP@{k}"] for k in kappas}}


def revisited_metrics(
    query,
    database,
    gnd: Sequence[Mapping],
    *,
    protocols: Sequence[str] = tuple(PROTOCOLS),
    kappas: Sequence[int] = KAPPAS,
    similarity: str | SimilarityFn = "dot",
    chunk_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Revisited Oxford/Paris evaluation: ``{"easy": {"mAP", "mP@1", "mP@5", "mP@10"}, "medium": ..., ...}``.

    Args:
        query: ``[nq, d]`` query descriptors, rows in ``qimlist`` order.
        database: ``[n, d]`` database descriptors, rows in ``imlist`` order.
        gnd: the ground truth's ``gnd`` list (``easy``, ``hard``, ``junk`` per query).
        similarity: score of a query and a database image (default: dot product, as revisitop).
    """
    out = {}
    for protocol in protocols:
        positives, junk = protocol_lists(gnd, protocol)
        out[protocol] = gnd_map(
            query, database, positives, junk, kappas=kappas, similarity=similarity, chunk_size=chunk_size
        )
    return out


def original_metrics(
    query,
    database,
    gnd: Sequence[Mapping],
    *,
    similarity: str | SimilarityFn = "dot",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Original Oxford5k / Paris6k evaluation (``ok`` positives, ``junk``): ``{"mAP": ...}``."""
    positives = [np.asarray(g["ok"], dtype=np.int64) for g in gnd]
    junk = [np.asarray(g["junk"], dtype=np.int64) for g in gnd]
    result = gnd_map(
        query, database, positives, junk, kappas=(), similarity=similarity, chunk_size=chunk_size
    )
    return {"mAP": result["mAP"]}
