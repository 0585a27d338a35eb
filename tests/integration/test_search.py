"""``search`` / ``recommend`` on an index of the tiny checkpoint: rankings against brute force, crops, model
checks, bad input (re-ranking on a synthetic index: tests/unit/search/test_search.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import last_json
from helpers.search import other_checkpoint, photo_folder, reference_vectors
from PIL import Image

from cbir_lightning.checkpoints import load_module
from cbir_lightning.cli import main
from cbir_lightning.errors import CbirError
from cbir_lightning.search.files import open_image
from cbir_lightning.search.manifest import MANIFEST, current_version
from cbir_lightning.search.query import SearchIndex, search_image


@pytest.fixture(scope="module")
def built(tiny_run, tmp_path_factory):
    """An index of 20 real photos plus an exact copy of one, built by the CLI (in this process), and the
    reference vectors of its items computed directly."""
    work = tmp_path_factory.mktemp("search")
    photos = photo_folder(work / "photos")
    shutil.copy(photos / "pitt_rivers_000033.jpg", photos / "copy_of_pitt.jpg")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["index", "--ckpt", str(tiny_run["ckpt"]), "--images", str(photos), "--out", str(work / "idx")])
    result = last_json(out.getvalue())
    assert result["count"] == 21 and result["skipped"] == [] and result["embedded"] == 21
    index = SearchIndex.open(work / "idx")
    files = [index.item_path(i) for i in range(len(index.items))]
    return {
        "work": work,
        "photos": photos,
        "index": work / "idx",
        "ckpt": tiny_run["ckpt"],
        "files": files,
        "database": reference_vectors(tiny_run["ckpt"], files),
        "module": load_module(tiny_run["ckpt"]),
    }


def cli(args, capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def brute_force(built, query: Path, crop=None) -> list[tuple[str, float]]:
    files, database, module = built["files"], built["database"], built["module"]
    image = Image.open(query)
    if crop:
        image = image.crop(crop)
        image.save(built["work"] / "cropped.png")
        query = built["work"] / "cropped.png"
    q = reference_vectors(built["ckpt"], [query])
    with torch.no_grad():
        scores = module.similarity(q, database)[0].double()
    order = torch.sort(-scores, stable=True).indices
    return [(str(files[i]), float(scores[i])) for i in order]


def test_search_cli_ranks_like_brute_force_and_writes_a_sheet(built, capsys):
    query = built["photos"] / "sacre_coeur" / "02928139_3448003521.jpg"
    code, out, err = cli(
        [
            "search",
            "--index",
            str(built["index"]),
            "--query",
            str(query),
            "--top-k",
            "5",
            "--sheet",
            str(built["work"] / "sheet.png"),
        ],
        capsys,
    )
    assert code == 0, err
    results = json.loads(out.strip().splitlines()[-1])
    expected = brute_force(built, query)[:5]
    assert [r["path"] for r in results] == [p for p, _ in expected]
    assert np.allclose([r["score"] for r in results], [s for _, s in expected], atol=1e-5)
    assert results[0]["path"] == str(query)
    sheet = Image.open(built["work"] / "sheet.png")
    assert sheet.format == "PNG" and sheet.width == 6 * 160


def test_crop_equals_searching_the_cropped_image(built):
    query = built["photos"] / "radcliffe_camera_000095.jpg"
    index = SearchIndex.open(built["index"])
    model = index.load_model()
    got = search_image(index, model, open_image(query), top_k=21, crop="40,30,300,200")
    expected = brute_force(built, query, crop=(40, 30, 300, 200))
    assert [r["path"] for r in got] == [p for p, _ in expected]
    with pytest.raises(CbirError, match="lies outside"):
        search_image(index, model, open_image(query), crop="0,0,99999,10")
    with pytest.raises(CbirError, match="--crop must be x0,y0,x1,y1"):
        search_image(index, model, open_image(query), crop="5,5,1")


def test_another_model_is_refused(built, tmp_path, capsys):
    other = other_checkpoint(built["ckpt"], tmp_path / "other.ckpt")
    query = built["photos"] / "bodleian_000132.jpg"
    code, out, err = cli(
        ["search", "--index", str(built["index"]), "--query", str(query), "--ckpt", str(other)], capsys
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "is not the model index" in err and "re-index" in err
    # the same weights at another path are accepted
    shutil.copy(built["ckpt"], tmp_path / "moved.ckpt")
    assert SearchIndex.open(built["index"]).load_model(tmp_path / "moved.ckpt")


def test_bad_queries_and_indexes_give_one_line(built, tmp_path, capsys):
    (tmp_path / "q.jpg").write_bytes(b"\xff\xd8 broken")
    bad, good = str(tmp_path / "q.jpg"), str(built["photos"] / "bodleian_000132.jpg")
    for args, message in [
        (
            ["--index", str(built["index"]), "--query", bad],
            "q.jpg: corrupt or unsupported image (not an image",
        ),
        (["--index", str(tmp_path / "nothing"), "--query", good], "not found"),
        (
            ["--index", str(built["index"]), "--query", good, "--rerank", "aqe"],
            "--rerank aqe needs dot-product",
        ),
        (["--index", str(built["index"]), "--query", good, "--rerank", "magic"], "--rerank must be one of"),
    ]:
        code, out, err = cli(["search", *args], capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_nonsense_crops_and_batch_sizes_give_one_line(built, tmp_path, capsys):
    good = str(built["photos"] / "bodleian_000132.jpg")
    for crop, message in [
        ("0,0,99999999999,99999999999", "lies outside the"),
        ("5,5,1,1", "--crop must be x0,y0,x1,y1"),
        ("0,0,1e999,5", "--crop must be x0,y0,x1,y1"),
        ("nan,0,5,5", "--crop must be x0,y0,x1,y1"),
        ("-1,0,5,5", "--crop must be x0,y0,x1,y1"),
        ("1,2,3", "--crop must be x0,y0,x1,y1"),
    ]:
        code, out, err = cli(
            ["search", "--index", str(built["index"]), "--query", good, f"--crop={crop}"], capsys
        )
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (crop, err)
    for size in ("0", "-3"):
        args = [
            "--ckpt",
            str(built["ckpt"]),
            "--images",
            str(built["photos"]),
            "--out",
            str(tmp_path / "idx"),
        ]
        code, out, err = cli(["index", *args, f"--batch-size={size}"], capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1, (size, err)
        assert f"--batch-size must be a positive number of images, got {size}" in err
        assert not (tmp_path / "idx").exists()


def test_bad_numbers_and_paths_give_one_line(built, tmp_path, capsys):
    """Numbers out of range and a folder where a file belongs are one line each (each was accepted, or a
    traceback, before) and write nothing."""
    good = str(built["photos"] / "bodleian_000132.jpg")
    folder = tmp_path / "sheet.png"
    folder.mkdir()
    index = ["--index", str(built["index"])]
    for args, message in [
        (["search", *index, "--query", good, "--top-k", "0"], '"top_k"'),
        (["search", *index, "--query", good, "--text-weight", "-1"], '"text_weight"'),
        (["search", *index, "--query", good, "--sheet", str(folder)], "is a folder; pass the path of a file"),
        (["recommend", *index, "--image", good, "--duplicate-threshold", "5"], '"duplicate_threshold"'),
        (["recommend", *index, "--image", good, "--top-k", "-3"], '"top_k"'),
        (["recommend", *index, "--image", str(folder)], "cannot read image (Is a directory)"),
        (["recommend", *index, "--image", str(tmp_path / "none.jpg")], "cannot read image (No such file"),
        (["serve", *index, "--port", "99999"], '"port"'),
        (["serve", *index, "--max-concurrent", "0"], '"max_concurrent"'),
        (["serve", *index, "--max-upload-mb", "-1"], '"max_upload_mb"'),
    ]:
        code, out, err = cli(args, capsys)  # 2: refused by the parser, 1: by the command
        assert code in (1, 2) and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err and out == ""
    assert list(folder.iterdir()) == []


def test_a_damaged_manifest_is_one_line(built, tmp_path, capsys):
    """A hand-edited or damaged manifest (items cut, a field of the wrong type) is one line naming what is
    wrong (an IndexError, TypeError or AttributeError in the search before)."""
    good = str(built["photos"] / "bodleian_000132.jpg")
    for name, edit, message in [
        ("cut", lambda m: m.update(items=m["items"][:2]), "2 items for a count of 21"),
        ("text", lambda m: m.update(items="abc"), "'items' is not a list"),
        ("no_model", lambda m: m.update(model=None), "'model' is not a dict"),
        ("whitening", lambda m: m.update(whitening="w.pt"), "'whitening' is not an object"),
    ]:
        index = tmp_path / name
        shutil.copytree(built["index"], index)
        manifest_file = current_version(index) / MANIFEST
        manifest = json.loads(manifest_file.read_text())
        edit(manifest)
        manifest_file.write_text(json.dumps(manifest))
        code, out, err = cli(["search", "--index", str(index), "--query", good], capsys)
        assert code == 1 and "manifest is damaged" in err and message in err, (name, err)
        assert len(err.strip().splitlines()) == 1 and out == "", err


def test_recommend_removes_exact_and_near_duplicates(built, capsys):
    image = built["photos"] / "pitt_rivers_000033.jpg"
    ranking = brute_force(built, image)
    # items 2..4 of the ranking are "near duplicates" (items 0, 1: exact copies); the threshold lies
    # between items 4 and 5, so float rounding between batched and single embeddings cannot move it
    assert ranking[4][1] - ranking[5][1] > 1e-4
    threshold = (ranking[4][1] + ranking[5][1]) / 2
    code, out, err = cli(
        [
            "recommend",
            "--index",
            str(built["index"]),
            "--image",
            str(image),
            "--top-k",
            "3",
            "--duplicate-threshold",
            str(threshold),
            "--sheet",
            str(built["work"] / "recommend.jpg"),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    copies = {str(image), str(built["photos"] / "copy_of_pitt.jpg")}
    assert set(result["exact_duplicates"]) == copies
    near = [p for p, s in ranking if s >= threshold and p not in copies]
    assert result["near_duplicates"] == near
    rest = [p for p, s in ranking if s < threshold and p not in copies][:3]
    assert [r["path"] for r in result["results"]] == rest
    # the contact sheet (JPEG by its suffix): the image and its 3 recommendations, one row of 6 tiles
    sheet = Image.open(built["work"] / "recommend.jpg")
    assert sheet.format == "JPEG" and sheet.size == (6 * 160, 160 + 18)
    frame = lambda tile: np.asarray(sheet.convert("RGB"))[80, tile * 160 + 1].astype(int)  # noqa: E731
    assert abs(frame(0) - [0, 0, 255]).max() < 40  # the query's blue frame
    assert abs(frame(3) - [128, 128, 128]).max() < 40  # the third recommendation's grey frame
    assert frame(4).min() > 230  # no fourth tile
