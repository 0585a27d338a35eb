"""The Python API (``cbir_lightning.api``) against the CLI on the legacy GeM checkpoint (with its whitening
file; its loss names converted to today's by the converter, ``current_hyper_parameters``) and its ONNX
export: the README example runs, a checkpoint and its export embed alike, and ``Index.search`` /
``Index.recommend`` return what ``search`` / ``recommend`` print."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.cli import last_json
from helpers.paths import REPO
from helpers.search import photo_folder
from PIL import Image

from cbir_lightning import Embedder, Index
from cbir_lightning.cli import main
from cbir_lightning.model_file import current_hyper_parameters

pytest.importorskip("onnxruntime")

GEM = REPO / "tests" / "fixtures" / "legacy" / "gem_wikiart"


def run(args: list[str]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(args)
    return last_json(out.getvalue())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder as the README example expects it: model.ckpt (+ model.whitening.pt), its export model.onnx,
    and photos/ with 20 real photos, a.jpg and b.jpg among them."""
    work = tmp_path_factory.mktemp("api")
    contents = torch.load(GEM / "model.ckpt", map_location="cpu", weights_only=True)
    hparams, state = contents["hyper_parameters"], contents["state_dict"]
    contents["hyper_parameters"] = current_hyper_parameters(hparams, state)
    torch.save(contents, work / "model.ckpt")  # a checkpoint of today (export reads no loss names)
    shutil.copy(GEM / "model.whitening.pt", work / "model.whitening.pt")
    photos = photo_folder(work / "photos")
    first, second = sorted(photos.glob("*.jpg"))[:2]
    first.rename(photos / "a.jpg")
    second.rename(photos / "b.jpg")
    exported = run(["export", "--ckpt", str(work / "model.ckpt"), "--out", str(work / "model.onnx")])
    assert exported["max_abs_diff"] <= 1e-4
    return work


@pytest.fixture(scope="module")
def cli_index(work):
    """The photos indexed by ``cbir-lightning index --ckpt model.ckpt``."""
    args = [
        "--ckpt",
        str(work / "model.ckpt"),
        "--images",
        str(work / "photos"),
        "--out",
        str(work / "cli.idx"),
    ]
    assert run(["index", *args, "--accelerator", "cpu"])["count"] == 20
    return work / "cli.idx"


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(work, monkeypatch, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(work)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([2, 32]) 32" in out
    assert re.search(r"^1 .*photos/a\.jpg 1\.0", out, re.M), out
    assert (work / "photos.idx" / "CURRENT").is_file()


def test_checkpoint_and_onnx_embed_alike_and_as_the_index_does(work, cli_index):
    files = sorted((work / "photos").rglob("*.jpg"))
    by_ckpt, by_onnx = Embedder.load(work / "model.ckpt"), Embedder.load(work / "model.onnx")
    assert not by_ckpt.is_onnx and by_onnx.is_onnx and by_ckpt.dim == by_onnx.dim == 32
    a, b = by_ckpt.embed(files, batch_size=7), by_onnx.embed(files, batch_size=5)
    assert a.shape == (20, 32) and a.dtype == torch.float32
    assert (a - b).abs().max() <= 1e-4
    # the vectors `index` stores (Lightning's predict loop, whitening applied)
    index = Index.open(cli_index)
    stored = torch.from_numpy(index.searcher.embeddings)
    assert (by_ckpt.embed(index.paths) - stored).abs().max() <= 1e-5
    assert len(index) == 20 and index.embedder.path == (work / "model.ckpt").resolve()


def test_search_and_recommend_equal_the_cli(work, cli_index):
    index_dir = cli_index
    query = work / "photos" / "b.jpg"
    printed = run(["search", "--index", str(index_dir), "--query", str(query), "--top-k", "5"])
    index = Index.open(index_dir)
    hits = index.search(query, k=5)
    assert [{"path": h.path, "score": h.score} for h in hits] == printed
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and hits[0].path == str(query)
    # the same query as a PIL image, a preprocessed tensor, a vector; and through the ONNX export
    vector = index.embedder.embed(query)[0]
    for same in (Image.open(query), index.embedder.preprocess(query), vector, vector.numpy()):
        assert [h.path for h in index.search(same, k=5)] == [p["path"] for p in printed]
        assert np.allclose(
            [h.score for h in index.search(same, k=5)], [p["score"] for p in printed], atol=1e-5
        )
    assert [h.path for h in Index.open(index_dir, work / "model.onnx").search(query, k=5)] == [
        p["path"] for p in printed
    ]
    crop = "10,10,200,150"
    printed = run(
        ["search", "--index", str(index_dir), "--query", str(query), "--crop", crop, "--rerank", "aqe"]
    )
    got = index.search(query, crop=crop, rerank="aqe")
    assert [{"path": h.path, "score": h.score} for h in got] == printed
    printed = run(["recommend", "--index", str(index_dir), "--image", str(query), "--top-k", "3"])
    found = index.recommend(query, k=3)
    assert [{"path": h.path, "score": h.score} for h in found["results"]] == printed["results"]
    assert [h.path for h in found["exact_duplicates"]] == printed["exact_duplicates"] == [str(query)]
    assert [h.path for h in found["near_duplicates"]] == printed["near_duplicates"]


def test_an_embedder_opens_an_index_as_loaded_and_another_model_is_refused(work, cli_index, monkeypatch):
    import cbir_lightning.search.query as query_module
    from cbir_lightning.errors import CbirError

    reads = []
    for path in (work / "model.ckpt", work / "model.onnx"):
        embedder = Embedder.load(path)
        not_loaded = SimpleNamespace(load=lambda *a: reads.append(a))  # the model must not be read again
        monkeypatch.setattr(query_module, "SearchModel", not_loaded)
        index = Index.open(cli_index, embedder)
        assert index.embedder is embedder and not reads
        assert index.search(work / "photos" / "a.jpg", k=1)[0].path.endswith("a.jpg")
        monkeypatch.undo()
    other = Embedder.load(REPO / "tests" / "fixtures" / "legacy" / "koch_omniglot" / "model.ckpt")
    with pytest.raises(CbirError, match="is not the model index .* was built with"):
        Index.open(cli_index, other).embedder  # noqa: B018
