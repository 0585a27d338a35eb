"""Revisited Oxford / Paris: the real ground-truth pickles, the E/M/H protocol against a transcription of
revisitop's code, perfect rankings, and the restricted unpickler."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.paths import SHARED_DATA
from helpers.revisitop import original_reference, revisited_reference

from cbir_lightning.errors import CbirError
from cbir_lightning.metrics import original_metrics, protocol_lists, retrieval_metrics, revisited_metrics
from data_modules.io.pickles import safe_load_pickle
from data_modules.landmarks.gnd import load_gnd

GND = SHARED_DATA / "landmarks" / "gnd"
SIZES = {"roxford5k": (70, 4993), "rparis6k": (70, 6322), "oxford5k": (55, 5063), "paris6k": (55, 6392)}


@pytest.fixture(scope="module", params=list(SIZES))
def truth(request):
    path = GND / f"gnd_{request.param}.pkl"
    if not path.is_file():
        pytest.skip(f"real ground truth not found at {path}")
    return load_gnd(path)


def test_real_gnd_pickles_load(truth):
    nq, n = SIZES[truth.name]
    assert (truth.num_queries, len(truth.imlist), len(truth.qimlist)) == (nq, n, nq)
    assert truth.revisited == truth.name.startswith("r")
    keys = {"easy", "hard", "junk"} if truth.revisited else {"ok", "junk"}
    assert all(set(g) == keys for g in truth.gnd)
    assert all(len(g["easy" if truth.revisited else "ok"]) for g in truth.gnd[:5])
    if (
        not truth.revisited
    ):  # original format: query i is database image imlist[qidx[i]], one of its positives
        assert truth.qimlist[0] in truth.imlist


def _perfect_descriptors(truth, seed=0):
    """Q = identity, X[j, i] = score of database item j for query i: easy 3, hard 2, junk 2.5, rest < 1."""
    rng = np.random.default_rng(seed)
    scores = rng.random((len(truth.imlist), truth.num_queries))
    for i, g in enumerate(truth.gnd):
        for key, value in (("junk", 2.5), ("hard", 2.0), ("easy", 3.0), ("ok", 3.0)):
            if key in g:
                scores[g[key], i] = value
    return np.eye(truth.num_queries), scores


def test_perfect_ranking_scores_one(truth):
    query, database = _perfect_descriptors(truth)
    if truth.revisited:
        result = revisited_metrics(query, database, truth.gnd)
        assert set(result) == {"easy", "medium", "hard"}
        assert all(value == 1.0 for values in result.values() for value in values.values()), result
    else:
        assert original_metrics(query, database, truth.gnd) == {"mAP": 1.0}


def test_matches_revisitop_on_random_descriptors(truth):
    rng = np.random.default_rng(1)
    database = rng.standard_normal((len(truth.imlist), 24)).astype(np.float32)
    query = rng.standard_normal((truth.num_queries, 24)).astype(np.float32)
    for i, g in enumerate(truth.gnd):  # informative but imperfect: near a few positives
        first = g["easy" if truth.revisited else "ok"][:3]
        if len(first):
            query[i] = database[first].mean(0) + 0.5 * rng.standard_normal(24)
    if truth.revisited:
        ours = revisited_metrics(
            torch.from_numpy(query).double(), torch.from_numpy(database).double(), truth.gnd
        )
        reference = revisited_reference(query, database, truth.gnd)
        for protocol, values in reference.items():
            for key, value in values.items():
                assert ours[protocol][key] == pytest.approx(value, abs=1e-12), (protocol, key)
        assert 0.02 < ours["medium"]["mAP"] < 0.98  # a ranking that really tests something
    else:
        ours = original_metrics(
            torch.from_numpy(query).double(), torch.from_numpy(database).double(), truth.gnd
        )
        assert ours["mAP"] == pytest.approx(original_reference(query, database, truth.gnd), abs=1e-12)


def test_protocol_lists_follow_the_paper():
    gnd = [{"easy": [1, 2], "hard": [3], "junk": [4]}]
    for protocol, expected in [
        ("easy", ([1, 2], [4, 3])),
        ("medium", ([1, 2, 3], [4])),
        ("hard", ([3], [4, 1, 2])),
    ]:
        positives, junk = protocol_lists(gnd, protocol)
        assert (positives[0].tolist(), junk[0].tolist()) == expected
    with pytest.raises(ValueError, match="protocol"):
        protocol_lists(gnd, "extreme")


def test_hand_case_junk_before_and_between_positives():
    # database items 0..7 scored 8..1; easy {1, 6}, hard {4}, junk {0, 3}
    gnd = [{"easy": [1, 6], "hard": [4], "junk": [0, 3]}]
    query, database = np.eye(1), np.arange(8, 0, -1, dtype=np.float64)[:, None]
    out = revisited_metrics(query, database, gnd)
    # easy: junk {0,3,4} removed -> ranking 1 2 5 6 7 -> positives at 1, 4 (R = 2)
    easy_ap = ((1 + 1) / 2 + (1 / 3 + 2 / 4) / 2) / 2
    assert out["easy"] == pytest.approx({"mAP": easy_ap, "mP@1": 1.0, "mP@5": 2 / 4, "mP@10": 2 / 4})
    # medium: junk {0,3} removed -> 1 2 4 5 6 7 -> positives at 1, 3, 5
    medium_ap = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 4 + 3 / 5) / 2) / 3
    assert out["medium"] == pytest.approx({"mAP": medium_ap, "mP@1": 1.0, "mP@5": 3 / 5, "mP@10": 3 / 5})
    # hard: junk {0,3,1,6} removed -> 2 4 5 7 -> positive at 2
    assert out["hard"] == pytest.approx({"mAP": (0 + 1 / 2) / 2, "mP@1": 0.0, "mP@5": 1 / 2, "mP@10": 1 / 2})
    reference = revisited_reference(query, database, gnd)
    for protocol in reference:
        assert out[protocol] == pytest.approx(reference[protocol], abs=1e-15)


def test_queries_without_positives_are_skipped():
    gnd = [{"easy": [], "hard": [0], "junk": []}, {"easy": [1], "hard": [], "junk": []}]
    query, database = np.eye(2), np.eye(2)
    out = revisited_metrics(query, database, gnd)
    assert out["easy"]["mAP"] == 1.0  # only query 1 counts
    assert out["hard"]["mAP"] == 1.0  # only query 0 counts
    ranked = retrieval_metrics(query, database, positives=[[], []], similarity="dot")
    assert ranked["num_queries"] == 0 and math.isnan(ranked["mAP"])


# --------------------------------------------------------------------------------------------------
# the restricted unpickler


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "gnd_evil.pkl"
    bad.write_bytes(pickle.dumps({"imlist": ["a"], "gnd": [_Evil(marker)]}))
    with pytest.raises(CbirError) as info:
        load_gnd(bad)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "system" in message
    assert not marker.exists()


def test_unpickler_refuses_builtins_eval(tmp_path):
    bad = tmp_path / "gnd_eval.pkl"
    # GLOBAL builtins.eval, then call it: the classic payload without any helper class
    bad.write_bytes(b"\x80\x02cbuiltins\neval\nq\x00X\x06\x00\x00\x001+1==2q\x01\x85q\x02Rq\x03.")
    with pytest.raises(CbirError, match="builtins.eval"):
        safe_load_pickle(bad)


def test_unpickler_reads_numpy_arrays(tmp_path):
    data = {
        "imlist": ["a", "b", "c"],
        "qimlist": ["q"],
        "gnd": [{"bbx": np.array([1.0, 2, 3, 4]), "easy": np.array([0]), "hard": np.array([2]), "junk": []}],
    }
    for protocol in (2, 4, 5):
        path = tmp_path / f"gnd_np{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        truth = load_gnd(path)
        assert truth.gnd[0]["easy"].tolist() == [0] and truth.gnd[0]["hard"].tolist() == [2]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        (b"\x80\x04\x95", "not a readable ground-truth pickle"),
        (pickle.dumps([1, 2]), "expected a dict"),
        (
            pickle.dumps({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [5], "hard": [], "junk": []}]}),
            "outside",
        ),
    ],
)
def test_bad_gnd_files_give_one_line(tmp_path, content, match):
    path = tmp_path / "gnd_bad.pkl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CbirError, match=match) as info:
        load_gnd(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_download_offline_gives_one_line(tmp_path):
    from data_modules.landmarks.download import download_revisited

    with pytest.raises(CbirError) as info:  # nothing listens on port 9 of this machine
        download_revisited("roxford5k", tmp_path, gnd_url="http://127.0.0.1:9/{dataset}/gnd_{dataset}.pkl")
    message = str(info.value)
    assert "\n" not in message and "could not download" in message and "gnd_roxford5k.pkl" in message
    assert not list(tmp_path.rglob("*.pkl*"))
