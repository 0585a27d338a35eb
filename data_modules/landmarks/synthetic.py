"""SYNTHETIC descriptors drawn to follow a landmark ground truth (for re-ranking and protocol demos).

Landmarks are the groups of queries that share a positive (union-find over the ``easy``/``hard`` or
``ok`` lists). Each landmark gets a centre ``c ~ N(0, I_dim)``; then, with ``z ~ N(0, I_dim)`` fresh each
time and every row L2-normalised at the end:

* query ``q`` of landmark ``L``: ``c_L + easy * z``;
* easy (or ``ok``) positive of ``L``: ``c_L + easy * z``; hard positive: ``c_L + hard * z``;
* every other database item (junk, negatives): ``z``.

So easy positives sit as close to their query as another view of it, hard ones further, and the rest
is unrelated. The numbers they give measure the protocol and the re-rankers, not any model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def synthetic_descriptors(
    gnd: Sequence[Mapping],
    num_database: int,
    dim: int = 128,
    easy: float = 1.2,
    hard: float = 2.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(queries [len(gnd), dim], database [num_database, dim])``, float32 unit rows, seeded.

    Args:
        gnd: per query, database indices under ``easy``/``hard`` (revisited) or ``ok`` (original).
        num_database: number of database items (``len(imlist)``).
        easy: noise scale of queries and easy positives around their landmark's centre.
        hard: noise scale of hard positives.
    """
    rng = np.random.default_rng(seed)
    nq = len(gnd)
    parent = list(range(nq))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def easy_of(g: Mapping):
        return g["easy"] if "easy" in g else g.get("ok", [])

    owner: dict[int, int] = {}
    for q, g in enumerate(gnd):
        for item in [int(i) for i in easy_of(g)] + [int(i) for i in g.get("hard", [])]:
            if item in owner:
                parent[find(q)] = find(owner[item])
            else:
                owner[item] = q
    centres = {root: rng.standard_normal(dim) for root in {find(q) for q in range(nq)}}
    database = rng.standard_normal((num_database, dim))
    for q, g in enumerate(gnd):
        centre = centres[find(q)]
        for item in easy_of(g):
            database[item] = centre + easy * rng.standard_normal(dim)
        for item in g.get("hard", []):
            database[item] = centre + hard * rng.standard_normal(dim)
    queries = np.stack([centres[find(q)] + easy * rng.standard_normal(dim) for q in range(nq)])
    return _unit(queries), _unit(database)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
