"""The Milvus store (Milvus Lite, embedded) against references on the same vectors: its exact top-10 equals
faiss's (the index folder's search), ``where`` equals an exact post-filter of the full ranking (pandas),
text search ranks by BM25, and hybrid search equals the reciprocal rank fusion of the two rankings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cbir_lightning.api import Index
from cbir_lightning.errors import CbirError
from cbir_lightning.retrieval.faiss_knn import FaissKnn
from cbir_lightning.retrieval.fusion import reciprocal_rank_fusion
from cbir_lightning.search.metadata import Metadata
from cbir_lightning.search.milvus_store import FORMAT_VERSION, MAGIC, MilvusStore, connect
from cbir_lightning.search.query import hybrid_search
from cbir_lightning.search.store import parse_store
from cbir_lightning.search.store_build import _row, create_collection

N, DIM = 1500, 24
STYLES = ["Rococo", "Ukiyo-e", "Impressionism"]
WORDS = ["venice", "canal", "portrait", "garden", "river", "snow", "harbour", "bridge"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of N random unit vectors with a style, a year (some missing) and a title."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    columns = {
        "path": [f"a/{i:05d}.jpg" for i in range(N)],
        "style": [STYLES[i % 3] for i in range(N)],
        "year": [None if i % 7 == 0 else int(y) for i, y in enumerate(rng.integers(1600, 1950, N))],
        "title": [" ".join(rng.choice(WORDS, 3)) for _ in range(N)],
    }
    table = pd.DataFrame(columns)  # missing years are NaN: every comparison with them is False
    meta = Metadata(
        {"style": "str", "year": "int", "title": "str"},
        {p: {k: columns[k][i] for k in ("style", "year", "title")} for i, p in enumerate(columns["path"])},
    )
    address = parse_store(f"milvus:{tmp_path_factory.mktemp('store') / 'test.db'}")
    client = connect(address, create=True)
    manifest = {
        "magic": MAGIC,
        "format_version": FORMAT_VERSION,
        "images_root": "/photos",
        "model": {},
        "dimension": DIM,
        "scoring": "dot",
        "columns": meta.columns,
        "text_columns": ["title"],
        "count": N,
    }
    create_collection(client, address, DIM, meta.columns, manifest)
    items = [{"path": p, "size": 1, "mtime_ns": 1, "sha256": "0" * 64} for p in table.path]
    client.upsert(
        address.collection, [_row(it, v, meta, ["title"]) for it, v in zip(items, vectors, strict=True)]
    )
    client.close()
    opened = MilvusStore.open(address)
    yield opened, vectors, table
    opened.close()


def ranking(found: list[dict]) -> list[str]:
    return [r["id"] for r in found]


def test_exact_top10_equals_faiss_on_the_same_vectors(store):
    opened, vectors, table = store
    knn = FaissKnn(vectors, "dot")
    queries = np.random.default_rng(1).normal(size=(20, DIM)).astype(np.float32)
    for q in queries:
        scores, rows = knn.search(torch.from_numpy(q[None]), 10, rescore=False)
        found = opened.vector_search(torch.from_numpy(q[None]), 10)
        assert ranking(found) == list(table.path[rows[0].numpy()])
        assert np.allclose([r["score"] for r in found], scores[0].numpy(), atol=1e-5)
        assert found[0]["path"] == f"/photos/{found[0]['id']}" and set(found[0]["metadata"]) == {
            "style",
            "year",
            "title",
        }


@pytest.mark.parametrize(
    "where",
    [
        "style == 'Rococo' and year < 1800",
        "year >= 1900 or style == 'Ukiyo-e'",
        "style in ['Rococo', 'Impressionism'] and year > 1700 and year <= 1750",
    ],
)
def test_where_equals_an_exact_post_filter_of_the_full_ranking(store, where):
    opened, vectors, table = store
    q = np.random.default_rng(2).normal(size=DIM).astype(np.float32)
    order = np.argsort(-(vectors @ q), kind="stable")  # the full ranking, every item
    keep = table.eval(where.replace(" in ", ".isin(").replace("]", "])"), engine="python")
    expected = [table.path[i] for i in order if keep[i]][:10]
    found = opened.vector_search(torch.from_numpy(q[None]), 10, where)
    assert ranking(found) == expected and len(expected) == 10
    rows = table.set_index("path").loc[ranking(found)]
    assert all(rows.eval(where.replace(" in ", ".isin(").replace("]", "])"), engine="python"))


def test_text_ranks_by_bm25_and_hybrid_fuses_both_rankings(store):
    opened, vectors, table = store
    found = opened.text_search("venice canal", 50, "style == 'Rococo'")
    titles = table.set_index("path").loc[ranking(found), "title"]
    assert all(("venice" in t or "canal" in t) for t in titles)
    both = [("venice" in t) + ("canal" in t) for t in titles]  # distinct words matched, best first
    assert both[0] == 2 and [r["score"] for r in found] == sorted((r["score"] for r in found), reverse=True)
    q = torch.from_numpy(vectors[3][None])
    fused = hybrid_search(opened, q, "venice canal", 10, "year < 1800", text_weight=2.0)
    image = ranking(opened.vector_search(q, 100, "year < 1800"))
    text = ranking(opened.text_search("venice canal", 100, "year < 1800"))
    expected = reciprocal_rank_fusion([image, text], [1.0, 2.0])[:10]
    assert [(r["id"], r["score"]) for r in fused] == [(i, round(s, 6)) for i, s in expected]


def test_bad_filters_and_foreign_collections_are_one_line(store, tmp_path):
    opened, _, _ = store
    q = torch.zeros(1, DIM)
    with pytest.raises(CbirError, match="--where 'colour == 1': unknown field 'colour'") as err:
        opened.vector_search(q, 5, "colour == 1")
    assert "\n" not in str(err.value)
    address = parse_store(f"milvus:{tmp_path / 'other.db'}")
    client = connect(address, create=True)
    client.create_collection(address.collection, dimension=4)  # someone else's collection
    client.close()
    with pytest.raises(CbirError, match="was not written by `cbir-lightning index`"):
        MilvusStore.open(address)
    (tmp_path / "plain.db").write_text("not a database")
    with pytest.raises(CbirError, match="is not a Milvus Lite database"):
        MilvusStore.open(f"milvus:{tmp_path / 'plain.db'}")
    assert json.loads((tmp_path / "plain.db").read_text().replace("not a database", "0")) == 0  # untouched


def test_rows_and_deletes_match_exact_paths_even_with_quotes(tmp_path):
    from cbir_lightning.search.milvus_store import paths_filter

    address = parse_store(f"milvus:{tmp_path / 'quotes.db'}")
    client = connect(address, create=True)
    manifest = {"magic": MAGIC, "format_version": FORMAT_VERSION, "images_root": "/p", "model": {}}
    manifest.update(dimension=4, scoring="dot", columns={}, text_columns=[], count=3)
    create_collection(client, address, 4, {}, manifest)
    names = ["plain.jpg", "it's.jpg", 'say "hi"\\.jpg']
    items = [{"path": p, "size": 1, "mtime_ns": 1, "sha256": ""} for p in names]
    client.upsert(address.collection, [_row(it, np.ones(4), Metadata({}, {}), []) for it in items])
    opened = MilvusStore(address, client, manifest)
    injection = "x' or path != 'x"  # pymilvus's own get-by-id would match every row with it
    assert opened.rows([injection]) == []
    assert sorted(r["path"] for r in opened.rows([names[1], names[2]])) == sorted(names[1:])
    client.delete(address.collection, filter=paths_filter([injection, names[1]]))
    assert sorted(r["path"] for r in opened.rows(names)) == sorted([names[0], names[2]])
    client.close()


def test_a_store_is_built_in_one_process_from_any_entry_point(tmp_path):
    """The builder itself refuses several processes (the CLI's check only guarded the CLI; from the Python
    API, DDP workers would each have run the whole build), before it reads a model or opens a database."""
    images = tmp_path / "photos"
    images.mkdir()
    for options in ({"devices": 2}, {"strategy": "ddp"}, {"num_nodes": 2}):
        with pytest.raises(CbirError, match="--store indexes in one process"):
            Index.build(images, f"milvus:{tmp_path / 'art.db'}", ckpt="missing.ckpt", trainer_options=options)
    assert not (tmp_path / "art.db").exists()
