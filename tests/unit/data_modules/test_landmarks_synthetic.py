"""SYNTHETIC descriptors that follow a landmark ground truth (``data_modules/landmarks/synthetic.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from cbir_lightning.metrics import revisited_metrics
from data_modules.landmarks.synthetic import synthetic_descriptors

# q0 and q1 share database item 1 (easy for q1, hard for q0): one landmark; q2 is another
GND = [
    {"easy": [0], "hard": [1], "junk": [5]},
    {"easy": [1, 2], "hard": [], "junk": []},
    {"easy": [3], "hard": [4], "junk": []},
]


def test_rows_are_unit_float32_and_seeded():
    queries, database = synthetic_descriptors(GND, 8, dim=16, seed=3)
    assert queries.shape == (3, 16) and database.shape == (8, 16)
    assert queries.dtype == database.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(database, axis=1), 1, atol=1e-6)
    again = synthetic_descriptors(GND, 8, dim=16, seed=3)
    assert np.array_equal(queries, again[0]) and np.array_equal(database, again[1])
    assert not np.array_equal(database, synthetic_descriptors(GND, 8, dim=16, seed=4)[1])


def test_without_noise_positives_are_their_landmark_centre():
    queries, database = synthetic_descriptors(GND, 8, dim=32, easy=0.0, hard=0.0)
    centre_a, centre_b = queries[0], queries[2]
    for row in (queries[1], database[0], database[1], database[2]):  # shared item 1 joins q0 and q1
        np.testing.assert_allclose(row, centre_a, atol=1e-6)
    for row in (database[3], database[4]):
        np.testing.assert_allclose(row, centre_b, atol=1e-6)
    assert abs(centre_a @ centre_b) < 0.9
    assert all(abs(database[i] @ centre_a) < 0.9 for i in (5, 6, 7))  # junk and negatives: random


def test_original_format_uses_ok_as_positives():
    queries, database = synthetic_descriptors([{"ok": [2], "junk": [0]}], 4, dim=32, easy=0.0)
    np.testing.assert_allclose(database[2], queries[0], atol=1e-6)


def test_easy_positives_score_above_hard_ones_above_the_rest():
    gnd = [{"easy": list(range(10 * q, 10 * q + 5)), "hard": list(range(10 * q + 5, 10 * q + 10)), "junk": []}
           for q in range(4)]  # fmt: skip
    queries, database = synthetic_descriptors(gnd, 400, dim=128, easy=0.3, hard=1.5)
    scores = queries @ database.T
    for q, g in enumerate(gnd):
        others = np.setdiff1d(np.arange(400), g["easy"] + g["hard"])
        assert scores[q, g["easy"]].min() > scores[q, g["hard"]].max() > scores[q, others].max()
    metrics = revisited_metrics(queries, database, gnd)
    assert metrics["easy"]["mAP"] == metrics["medium"]["mAP"] == metrics["hard"]["mAP"] == pytest.approx(1.0)
