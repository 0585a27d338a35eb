"""``cbir-lightning index --approximate``: a tuned HNSW index recorded in the manifest and applied by
``search`` (the size threshold lowered so a small folder gets one), exact below the threshold."""

from __future__ import annotations

import contextlib
import io
import json

import faiss
import pytest
from helpers.cli import last_json
from helpers.paths import REPO
from helpers.search import photo_folder

from cbir_lightning.cli import main
from cbir_lightning.retrieval import approximate
from cbir_lightning.search.manifest import FAISS_INDEX, MANIFEST, read_manifest
from cbir_lightning.search.query import SearchIndex

GEM = REPO / "tests" / "fixtures" / "legacy" / "gem_wikiart" / "model.ckpt"  # dot-product vectors


def run(args: list[str]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(args)
    return out.getvalue()


def index_args(photos, out, *extra: str) -> list[str]:
    return [
        "index",
        "--ckpt",
        str(GEM),
        "--images",
        str(photos),
        "--out",
        str(out),
        "--accelerator",
        "cpu",
        *extra,
    ]


def test_approximate_index_is_tuned_recorded_and_searched_with_its_parameters(tmp_path, monkeypatch):
    photos = photo_folder(tmp_path / "photos", count=20)
    run(index_args(photos, tmp_path / "exact"))
    monkeypatch.setattr(approximate, "MIN_SIZE", 10)  # 20 photos get an HNSW index
    report = last_json(
        run(index_args(photos, tmp_path / "approx", "--approximate", "true", "--target_recall", "0.9"))
    )
    manifest, version = read_manifest(tmp_path / "approx")
    assert report["faiss"] == manifest["faiss"] and manifest["faiss"]["kind"] == "hnsw"
    assert manifest["faiss"]["recall@10"] >= 0.9 and manifest["faiss"]["target_recall"] == 0.9
    assert list(manifest["faiss"]["params"]) == ["ef_search"] and manifest["faiss"]["tuning_queries"] == 2
    written = faiss.read_index(str(version / FAISS_INDEX))
    assert isinstance(written, faiss.IndexHNSWFlat) and written.ntotal == report["count"] == 20
    exact_manifest, exact_version = read_manifest(tmp_path / "exact")
    assert "faiss" not in exact_manifest  # the default: the format of earlier indexes
    assert isinstance(faiss.read_index(str(exact_version / FAISS_INDEX)), faiss.IndexFlatIP)

    query = sorted(photos.glob("*.jpg"))[3]
    searched = [
        json.loads(run(["search", "--index", str(tmp_path / name), "--query", str(query)]).splitlines()[-1])
        for name in ("exact", "approx")
    ]
    assert [r["path"] for r in searched[1]] == [r["path"] for r in searched[0]]  # 20 items: HNSW finds all
    assert [r["score"] for r in searched[1]] == pytest.approx([r["score"] for r in searched[0]], abs=1e-5)

    manifest["faiss"]["params"] = {"ef_search": 7}  # search applies the recorded parameter
    (version / MANIFEST).write_text(json.dumps(manifest))
    assert SearchIndex.open(tmp_path / "approx").knn.index.hnsw.efSearch == 7


def test_small_folders_stay_exact_and_say_why(tmp_path):
    photos = photo_folder(tmp_path / "photos", count=12)
    report = last_json(run(index_args(photos, tmp_path / "idx", "--approximate", "true")))
    assert report["faiss"]["kind"] == "flat" and report["faiss"]["reason"].endswith(
        "fewer than 10000: exact search"
    )
    _, version = read_manifest(tmp_path / "idx")
    assert isinstance(faiss.read_index(str(version / FAISS_INDEX)), faiss.IndexFlatIP)
    with pytest.raises(SystemExit):
        run(index_args(photos, tmp_path / "idx", "--approximate", "true", "--target_recall", "1.5"))
