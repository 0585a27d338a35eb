"""``index --metadata``: the table reader (kinds, paths, one-line refusals) and ``--store`` addresses."""

from __future__ import annotations

import pytest

from cbir_lightning.errors import CbirError
from cbir_lightning.search.metadata import column_kind, read_metadata
from cbir_lightning.search.store import is_store_address, parse_store


def test_columns_get_their_kinds_and_missing_values_are_none(tmp_path):
    table = tmp_path / "meta.tsv"
    table.write_text("path\tstyle\tyear\tprice\na/1.jpg\tRococo\t1750\t1.5\n./b.jpg\tUkiyo-e\t\t2\n")
    meta = read_metadata(table)
    assert meta.columns == {"style": "str", "year": "int", "price": "float"}
    assert meta.rows["a/1.jpg"] == {"style": "Rococo", "year": 1750, "price": 1.5}
    assert meta.row("b.jpg") == {"style": "Ukiyo-e", "year": None, "price": 2.0}
    assert meta.row("elsewhere.jpg") == {"style": None, "year": None, "price": None}
    csv = tmp_path / "meta.csv"
    csv.write_text('path,title\nx.jpg,"Venice, the Grand Canal"\n')
    assert read_metadata(csv).rows["x.jpg"] == {"title": "Venice, the Grand Canal"}
    assert [column_kind(v) for v in (["1", "2"], ["1", "2.5"], ["1", "x"], ["", ""])] == [
        "int",
        "float",
        "str",
        "str",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file\tstyle\na.jpg\tx\n", "has no 'path' column"),
        ("path\tmy style\na.jpg\tx\n", "column 'my style' is not a name"),
        ("path\tvector\na.jpg\tx\n", "is one of the index's own fields"),
        ("path\tstyle\na.jpg\tx\na.jpg\ty\n", "is listed twice"),
        ("path\tstyle\na.jpg\n", "line 2 has 1 fields"),
    ],
)
def test_bad_tables_are_one_line(tmp_path, text, message):
    table = tmp_path / "meta.tsv"
    table.write_text(text)
    with pytest.raises(CbirError, match=message) as err:
        read_metadata(table)
    assert "\n" not in str(err.value)


def test_store_addresses():
    lite = parse_store("milvus:./art.db")
    assert (lite.uri, lite.local, lite.collection, str(lite)) == (
        "./art.db",
        True,
        "images",
        "milvus:./art.db",
    )
    server = parse_store("milvus://db.lan:19530#paintings")
    assert (server.uri, server.local, server.collection) == ("http://db.lan:19530", False, "paintings")
    assert str(server) == "milvus://db.lan:19530#paintings"
    secure = parse_store("milvus+https://db.lan:443")
    assert secure.uri == "https://db.lan:443"
    assert str(secure) == "milvus+https://db.lan:443" and parse_store(str(secure)) == secure
    assert is_store_address("milvus:x.db") and not is_store_address("runs/photos.idx")
    for bad, message in (
        ("qdrant:./x", "unknown store"),
        ("milvus:./art", "milvus:PATH.db"),
        ("milvus://nohost", "HOST:PORT"),
        ("milvus:a.db#bad-name", "is not a name"),
    ):
        with pytest.raises(CbirError, match=message):
            parse_store(bad)
