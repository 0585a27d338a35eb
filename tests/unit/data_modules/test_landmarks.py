"""LandmarksTestDataModule and the LandmarkMetrics callback on a tiny revisited-Oxford layout built from the
real Oxford5k photos, scored against the transcribed revisitop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.revisitop import revisited_reference
from helpers.sfm import OXFORD, QUERIES, make_revisited_layout
from PIL import Image

from cbir_lightning.callbacks.landmark_metrics import LandmarkMetrics, landmark_scores
from cbir_lightning.errors import CbirError
from data_modules.landmarks import LandmarksTestDataModule


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
    callback = LandmarkMetrics(root, "roxford5k", image_size=64, num_workers=0)
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
