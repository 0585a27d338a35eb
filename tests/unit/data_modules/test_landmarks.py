"""LandmarksTestDataModule and the LandmarkMetrics callback on a tiny revisited-Oxford layout built from the
real Oxford5k photos, scored against the transcribed revisitop reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.revisitop import revisited_reference
from helpers.sfm import LANDMARKS, OXFORD, QUERIES, SACRE_COEUR, make_revisited_layout
from PIL import Image

from cbir_lightning.callbacks.landmark_metrics import LandmarkMetrics, landmark_scores
from cbir_lightning.errors import CbirError
from cbir_lightning.metrics import revisited_metrics
from cbir_lightning.rerank import alpha_query_expansion
from data_modules.landmarks import LandmarksTestDataModule
from data_modules.landmarks.gnd import GroundTruth, restrict_gnd


@pytest.fixture()
def layout(tmp_path):
    if len(OXFORD) < 10:
        pytest.skip("real Oxford5k photos not found in ../shared/data/landmarks")
    return tmp_path, make_revisited_layout(tmp_path)


class ColourNet(torch.nn.Module):
    def embed(self, x):
        return torch.nn.functional.normalize(torch.cat([x.mean((2, 3)), x.std((2, 3))], 1), dim=1)


def test_queries_are_cropped_and_items_ordered(layout):
    root, gnd = layout
    dm = LandmarksTestDataModule(root, "roxford5k", image_size=64, num_workers=0)
    dm.setup()
    assert len(dm.data) == 10
    x1, y1, x2, y2 = gnd["gnd"][0]["bbx"]
    crop = Image.open(root / "jpg" / f"{QUERIES[0]}.jpg").convert("RGB").crop((x1, y1, x2, y2))
    assert torch.equal(dm.data[0][0], dm.eval_transform(crop))
    db0 = Image.open(root / "jpg" / f"{gnd['imlist'][0]}.jpg")
    assert torch.equal(dm.data[2][0], dm.eval_transform(db0)) and max(dm.data[2][0].shape[1:]) == 64


def test_callback_scores_match_revisitop(layout):
    root, gnd = layout
    callback = LandmarkMetrics(LandmarksTestDataModule(root, "roxford5k", image_size=64, num_workers=0))
    net = ColourNet()
    scores = callback.score(net)
    dm = callback.data
    with torch.no_grad():
        vecs = torch.cat([net.embed(dm.data[i][0][None]) for i in range(len(dm.data))]).numpy()
    ref = revisited_reference(vecs[:2], vecs[2:], gnd["gnd"])
    for protocol, short in (("easy", "E"), ("medium", "M"), ("hard", "H")):
        assert scores[f"mAP_{short}"] == pytest.approx(ref[protocol]["mAP"], abs=1e-6)
        assert scores[f"mP@5_{short}"] == pytest.approx(ref[protocol]["mP@5"], abs=1e-6)
    # hand check: descriptors that put every easy/hard positive first score 1.0 under all protocols
    perfect = np.zeros((10, 10), dtype=np.float32)
    for q, entry in enumerate(gnd["gnd"]):
        perfect[q, q] = 1
        for j in np.concatenate([entry["easy"], entry["hard"]]):
            perfect[2 + j, q] = 1
    ideal = landmark_scores(torch.from_numpy(perfect), dm.gnd)
    assert ideal["mAP_E"] == ideal["mAP_M"] == ideal["mAP_H"] == 1.0


def test_missing_image_is_one_line(layout):
    root, gnd = layout
    (root / "jpg" / f"{gnd['imlist'][3]}.jpg").unlink()
    with pytest.raises(CbirError, match=f"1 of 10 images of roxford5k missing under .*{gnd['imlist'][3]}"):
        LandmarksTestDataModule(root, "roxford5k", image_size=64).setup()


def _tiny_truth() -> GroundTruth:
    """imlist a..e, queries q1..q3 (revisited keys), q1 and q3 with boxes."""
    lists = [
        {"easy": [0, 2], "hard": [3], "junk": [4]},
        {"easy": [1], "hard": [], "junk": [0]},
        {"easy": [4], "hard": [], "junk": []},
    ]
    gnd = [{key: np.asarray(v, dtype=np.int64) for key, v in entry.items()} for entry in lists]
    boxes = [[1.0, 2.0, 3.0, 4.0], None, [5.0, 6.0, 7.0, 8.0]]
    return GroundTruth(Path("gnd_tiny.pkl"), list("abcde"), ["q1", "q2", "q3"], gnd, True, boxes)


def test_restrict_gnd_keeps_present_images_reindexed_with_distractors_last():
    # b, d and q2 are absent: a, c, e become 0, 1, 2; the distractors 3, 4
    small = restrict_gnd(_tiny_truth(), {"q1", "q3", "a", "c", "e"}, ["z1", "z2"])
    assert small.imlist == ["a", "c", "e", "z1", "z2"] and small.qimlist == ["q1", "q3"]
    assert small.boxes == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    as_lists = [{key: v.tolist() for key, v in entry.items()} for entry in small.gnd]
    assert as_lists == [{"easy": [0, 1], "hard": [], "junk": [2]}, {"easy": [2], "hard": [], "junk": []}]
    with pytest.raises(CbirError, match="distractor 'a' is also an image"):
        restrict_gnd(_tiny_truth(), {"a"}, ["a"])


def test_restricted_ground_truth_scores_by_hand():
    small = restrict_gnd(_tiny_truth(), {"q1", "q3", "a", "c", "e"}, ["z1", "z2"])
    database = torch.eye(5, dtype=torch.float64)  # scores = the query's coordinates (a, c, e, z1, z2)
    query = torch.tensor([[0.8, 0.6, 0.7, 0.9, 0.1], [0.1, 0.2, 0.9, 0.3, 0.0]], dtype=torch.float64)
    # q1 ranks z1, a, e (junk: out), c, z2: positives at ranks 1 and 2 (0-based) of 2 -> trapezoid AP
    # (0 + 1/2) / 2 / 2 + (1/2 + 2/3) / 2 / 2 = 5/12; q3 ranks e first -> 1
    result = revisited_metrics(query, database, small.gnd, protocols=("easy", "medium"))
    assert result["medium"]["mAP"] == pytest.approx((5 / 12 + 1) / 2)
    assert result["easy"]["mAP"] == pytest.approx((5 / 12 + 1) / 2)


@pytest.mark.skipif(len(OXFORD) < 10 or len(SACRE_COEUR) < 10, reason="shared landmark photos not found")
def test_present_photos_with_distractors_as_a_datamodule():
    dm = LandmarksTestDataModule(
        LANDMARKS / "gnd",
        "oxford5k",
        image_size=64,
        images=LANDMARKS / "oxford5k_images",
        present_only=True,
        distractors=LANDMARKS / "sacre_coeur",
        num_workers=0,
    )
    dm.setup()
    gnd = dm.gnd
    assert gnd.num_queries == 10 and len(gnd.imlist) == 20 and len(dm.data) == 30
    assert gnd.imlist[10:] == [p.stem for p in SACRE_COEUR]
    assert all(len(entry["ok"]) == 5 and len(entry["junk"]) == 0 for entry in gnd.gnd)
    assert all(gnd.qimlist[q] in [gnd.imlist[i] for i in entry["ok"]] for q, entry in enumerate(gnd.gnd))
    name, box = gnd.qimlist[0], gnd.boxes[0]
    crop = Image.open(LANDMARKS / "oxford5k_images" / f"{name}.jpg").convert("RGB").crop(tuple(box))
    assert torch.equal(dm.data[0][0], dm.eval_transform(crop))


@pytest.mark.skipif(len(OXFORD) < 10, reason="shared landmark photos not found")
def test_revisited_ground_truth_on_its_query_photos_alone_is_one_line():
    dm = LandmarksTestDataModule(
        LANDMARKS / "gnd", "roxford5k", image_size=64, images=LANDMARKS / "oxford5k_images", present_only=True
    )
    with pytest.raises(CbirError, match="no query has a positive among the 0 of its images"):
        dm.setup()


def test_landmark_scores_rerank_equals_expanded_queries():
    truth = restrict_gnd(_tiny_truth(), {"q1", "q3", "a", "c", "e"}, ["z1", "z2"])
    gen = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(7, 4, generator=gen), dim=1)
    expanded = alpha_query_expansion(vectors[:2].double(), vectors[2:].double())
    direct = revisited_metrics(expanded, vectors[2:].double(), truth.gnd, protocols=("medium",))
    assert landmark_scores(vectors, truth, "aqe")["mAP_M"] == pytest.approx(direct["medium"]["mAP"])
