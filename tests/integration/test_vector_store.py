"""``index --store milvus:... --metadata`` and ``search --where --text`` through the real CLI on a few public-
domain paintings with the legacy GeM checkpoint (dot-product vectors): the store's exact top-10 equals the
index folder's on the same photos, filters hold and equal a post-filter of the full ranking, a re-run embeds
only what changed, and a foreign database is never touched."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from helpers.cli import last_json, run_cli
from helpers.paths import REPO, SHARED_DATA

from benchmarks.paintings_metadata import painting_rows, write_tsv
from cbir_lightning import Index

GEM = REPO / "tests" / "fixtures" / "legacy" / "gem_wikiart" / "model.ckpt"
PAINTINGS = SHARED_DATA / "wikiart_pd"
ARTISTS = ("canaletto", "francois-boucher", "utagawa-kuniyoshi")
WHERE = "artist != 'francois-boucher' and year < 1850"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """12 paintings (4 per artist) and their metadata, indexed by the CLI into a Milvus Lite store."""
    if not (PAINTINGS / "labels.tsv").is_file():
        pytest.skip(f"paintings not found in {PAINTINGS}")
    work = tmp_path_factory.mktemp("store")
    rows = [r for r in painting_rows(PAINTINGS) if r["path"].split("/")[0] in ARTISTS]
    rows = [r for a in ARTISTS for r in [r for r in rows if r["path"].startswith(a + "/")][:4]]
    for row in rows:
        (work / "art" / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PAINTINGS / row["path"], work / "art" / row["path"])
    write_tsv(rows, work / "meta.tsv")
    store = f"milvus:{work / 'art.db'}"
    args = ["index", "--ckpt", str(GEM), "--images", "art", "--store", store, "--metadata", "meta.tsv"]
    proc = run_cli([*args, "--text-columns", "[title]", "--accelerator", "cpu"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = last_json(proc.stdout)
    assert (report["count"], report["embedded"], report["metadata_rows"]) == (12, 12, 12)
    return work, store, pd.DataFrame(rows)


@pytest.fixture(scope="module")
def folder(built):
    """The same paintings in an index folder (the default backend), built through the Python API."""
    work, _, _ = built
    return Index.build(work / "art", work / "art.idx", GEM, trainer_options={"accelerator": "cpu"})


def test_cli_where_and_text_results_hold_the_filter_and_match_the_reference(built):
    work, store, table = built
    query = work / "art" / table.path[0]
    args = ["search", "--store", store, "--query", str(query), "--where", WHERE, "--top-k", "10"]
    proc = run_cli([*args, "--text", "grand canal venice"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = last_json(proc.stdout)
    allowed = set(table.query(WHERE).path)
    assert printed and all(r["path"].split("/art/", 1)[1] in allowed for r in printed)
    assert all(
        r["metadata"]["artist"] != "francois-boucher" and r["metadata"]["year"] < 1850 for r in printed
    )
    index = Index.open(store)
    fused = index.search(query, 10, where=WHERE, text="grand canal venice")
    assert [(r.path, r.score) for r in fused] == [(r["path"], r["score"]) for r in printed]
    # image-only: the engine's filtered top-k is the exact post-filter of the full ranking
    full = index.search(query, 100)
    expected = [r.path for r in full if r.path.split("/art/", 1)[1] in allowed][:10]
    assert [r.path for r in index.search(query, 10, where=WHERE)] == expected


def test_store_top10_equals_the_index_folder_and_reruns_are_incremental(built, folder):
    work, store, table = built
    opened = Index.open(store)
    for path in table.path[::3]:
        a, b = folder.search(work / "art" / path, 10), opened.search(work / "art" / path, 10)
        assert [r.path for r in a] == [r.path for r in b]
        assert [r.score for r in a] == pytest.approx([r.score for r in b], abs=2e-6)
    recommended = opened.recommend(work / "art" / table.path[0], k=3)  # same file hash: an exact duplicate
    assert [r.path for r in recommended["exact_duplicates"]] == [str(work / "art" / table.path[0])]
    assert len(recommended["results"]) == 3
    (work / "art" / table.path[1]).unlink()
    rows = [{k: _plain(v) for k, v in r.items()} for r in table.to_dict("records")]
    rows[2]["title"] = "a new title"
    write_tsv(rows, work / "meta.tsv")
    again = Index.build(work / "art", store, GEM, metadata=work / "meta.tsv", text_columns=["title"])
    assert (again.report["embedded"], again.report["reused"], again.report["removed"]) == (0, 11, 1)
    hits = Index.open(store).search(text="new title", k=1)
    assert hits[0].path.endswith(table.path[2]) and hits[0].metadata["title"] == "a new title"


def test_bad_input_is_one_line_and_foreign_files_are_untouched(built, folder, tmp_path, monkeypatch, capsys):
    from cbir_lightning.cli import main

    work, store, _ = built
    monkeypatch.chdir(work)
    foreign = tmp_path / "notes.db"
    foreign.write_text("someone else's")
    index = ["index", "--ckpt", str(GEM), "--images", "art"]
    cases = [
        (
            ["search", "--store", store, "--text", "canal", "--where", "colour == 'red'"],
            "unknown field 'colour'",
        ),
        (["search", "--store", "qdrant:./x", "--text", "canal"], "unknown store"),
        ([*index, "--store", f"milvus:{foreign}"], "is not a Milvus Lite database"),
        ([*index, "--out", "x", "--metadata", "meta.tsv"], "--metadata needs a database store"),
        (["search", "--index", str(folder.path), "--text", "canal"], "--text needs an index with metadata"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit):
            main(args)
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert foreign.read_text() == "someone else's" and not (work / "x").exists()


def _plain(value):
    """A table value as written before pandas read it: NaN -> None, 1750.0 -> 1750."""
    if isinstance(value, float):
        return None if pd.isna(value) else int(value)
    return value


def test_web_page_filters_and_searches_by_text_on_a_store(built):
    from fastapi.testclient import TestClient

    from cbir_lightning.web.app import create_app

    work, store, table = built
    client = TestClient(create_app([store], reload_s=0.0), base_url="http://127.0.0.1")
    described = client.get("/api/indexes").json()[0]
    assert described["columns"] == {"style": "str", "artist": "str", "title": "str", "year": "int"}
    assert described["text"] and described["count"] == len(list((work / "art").rglob("*.jpg")))
    picked = client.get("/api/indexes/0/items?limit=3").json()
    assert len(picked) == 3 and client.get(f"/api/indexes/0/images/{picked[0]['id']}").status_code == 200
    form = {"index": "0", "text": "grand canal venice", "where": WHERE, "item": picked[0]["id"]}
    answer = client.post("/api/search", data=form)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    allowed = set(table.query(WHERE).path)
    assert results and all(r["metadata"]["artist"] != "francois-boucher" for r in results)
    assert all(r["url"].split("/images/", 1)[1] in allowed for r in results)
    assert client.get(results[0]["url"]).content[:2] == b"\xff\xd8"  # the JPEG itself
    bad = client.post("/api/search", data={"index": "0", "text": "canal", "where": "colour == 'red'"})
    assert bad.status_code == 422 and "unknown field 'colour'" in bad.json()["detail"]
    assert str(work) not in bad.text
