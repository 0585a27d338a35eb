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
import pytorch_lightning as pl
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
    # the vectors `index` stores (inference.embed_dataset, whitening applied)
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


class KeepOutputs(pl.Callback):
    """The validation step's outputs, batch by batch."""

    def __init__(self) -> None:
        self.outputs = []

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        self.outputs.append(outputs)


def validation_vectors(ckpt, files) -> torch.Tensor:
    """What ``validate --ckpt_path`` computes for ``files``: the module (the whitening file beside the
    checkpoint attached at validation start) in Lightning's validation loop on the DataModule's
    ``eval_transform``, rows in file order."""
    from torch.utils.data import DataLoader

    from cbir_lightning.checkpoints import load_module
    from cbir_lightning.search.model import datamodule_from_checkpoint

    transform = datamodule_from_checkpoint(ckpt).eval_transform
    items = [(transform(Image.open(f)), 0, i) for i, f in enumerate(files)]
    keep = KeepOutputs()
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, callbacks=[keep],
    )  # fmt: skip
    loader = DataLoader(items, batch_size=1)
    trainer.validate(load_module(ckpt), loader, ckpt_path=str(ckpt), verbose=False)  # validate --ckpt_path
    vectors = torch.cat([o["embeddings"] for o in keep.outputs])
    return vectors[torch.cat([o["indices"] for o in keep.outputs]).argsort()]


def test_every_entry_point_embeds_through_embed_dataset_to_the_same_vectors(work, cli_index, monkeypatch):
    """Validation's embedding, ``index`` (checkpoint and ONNX), ``Embedder`` (checkpoint, model file, ONNX):
    the same vectors of real photos (GeM at two test-time scales, whitening file), 1e-5 apart (an ONNX
    export: its parity tolerance, 1e-4); ``Embedder`` and ``index`` go through ``inference.embed_dataset``
    (its local loop) with the module or the ONNX Runtime session."""
    import cbir_lightning.inference as inference
    from cbir_lightning.export.onnx_export import PARITY_TOLERANCE
    from cbir_lightning.model_file import ModelFile

    files = sorted((work / "photos").rglob("*.jpg"))
    expected = validation_vectors(work / "model.ckpt", files)
    routed = []
    local = inference._embed_local

    def counted(embed, *args):
        routed.append(getattr(embed, "__self__", embed))
        return local(embed, *args)

    monkeypatch.setattr(inference, "_embed_local", counted)
    model_file = ModelFile.from_checkpoint(work / "model.ckpt").save(work / "model.model")
    for path in (work / "model.ckpt", model_file):
        assert (Embedder.load(path).embed(files, batch_size=6) - expected).abs().max() <= 1e-5
    by_onnx = Embedder.load(work / "model.onnx").embed(files, batch_size=6)
    assert (by_onnx - expected).abs().max() <= PARITY_TOLERANCE
    assert len(routed) == 3 and type(routed[-1]).__name__ == "OnnxSearchModel"

    def stored(index_dir) -> torch.Tensor:
        index = Index.open(index_dir)
        rows = {p: i for i, p in enumerate(index.paths)}
        return torch.from_numpy(index.searcher.embeddings)[[rows[str(f)] for f in files]]

    assert (stored(cli_index) - expected).abs().max() <= 1e-5  # `index --ckpt` (before the patch)
    routed.clear()
    onnx_index = work / "onnx_route.idx"
    photos = ["--images", str(work / "photos")]
    run(["index", "--model", str(work / "model.onnx"), *photos, "--out", str(onnx_index)])
    assert (stored(onnx_index) - expected).abs().max() <= PARITY_TOLERANCE
    assert len(routed) == 1 and type(routed[0]).__name__ == "OnnxSearchModel"
    torch_index = work / "torch_route.idx"
    run(["index", "--ckpt", str(model_file), *photos, "--out", str(torch_index), "--accelerator", "cpu"])
    assert (stored(torch_index) - expected).abs().max() <= 1e-5
    assert len(routed) == 2 and type(routed[1]).__name__ == "GeMSiameseModule"
