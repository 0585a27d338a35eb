"""Reciprocal rank fusion against a hand-computed case."""

from __future__ import annotations

import pytest

from cbir_lightning.retrieval.fusion import reciprocal_rank_fusion


def test_fused_scores_equal_the_formula_by_hand():
    image, text = ["a", "b", "c"], ["c", "d", "a"]
    fused = reciprocal_rank_fusion([image, text], [1.0, 2.0], k=1)
    # a: 1/(1+1) + 2/(1+3) = 1.0; b: 1/(1+2) = 0.333; c: 1/(1+3) + 2/(1+1) = 1.25; d: 2/(1+2) = 0.667
    assert [item for item, _ in fused] == ["c", "a", "d", "b"]
    assert [round(score, 6) for _, score in fused] == [1.25, 1.0, 0.666667, 0.333333]


def test_default_is_unweighted_k60_and_ties_keep_first_met_order():
    fused = dict(reciprocal_rank_fusion([["x", "y"], ["y", "x"]]))
    assert fused["x"] == fused["y"] == pytest.approx(1 / 61 + 1 / 62)
    assert [item for item, _ in reciprocal_rank_fusion([["x", "y"], ["y", "x"]])] == ["x", "y"]
    assert reciprocal_rank_fusion([["x"], ["y"]], [0.0, 1.0])[0][0] == "y"  # weight 0: ignored


def test_bad_weights_are_refused():
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["x"]], [1.0, 1.0])
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["x"]], [-1.0])
