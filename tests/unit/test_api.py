"""``Embedder`` / ``Index`` of :mod:`cbir_lightning.api` on the legacy GeM checkpoint (tests/fixtures/legacy):
every kind of image input embeds alike, and bad input is one CbirError line (CLI parity:
tests/integration/test_api.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.paths import REPO
from helpers.search import LANDMARKS
from PIL import Image

from cbir_lightning.api import Embedder, Index, model_files
from cbir_lightning.errors import CbirError

CKPT = REPO / "tests" / "fixtures" / "legacy" / "gem_wikiart" / "model.ckpt"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(CKPT)


@pytest.fixture(scope="module")
def files() -> list:
    found = sorted((LANDMARKS / "oxford5k_images").glob("*.jpg"))[:5]
    if not found:
        pytest.skip(f"landmark photos not found under {LANDMARKS}")
    return found


def one_line_error(call, match: str) -> str:
    with pytest.raises(CbirError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_path_pil_and_tensor_embed_alike(embedder, files):
    by_path = embedder.embed(files[0])
    assert by_path.shape == (1, embedder.dim) == (1, 32) and by_path.dtype == torch.float32
    assert torch.equal(embedder.embed(Image.open(files[0])), by_path)
    assert torch.equal(embedder.embed(embedder.preprocess(files[0])), by_path)
    assert torch.equal(embedder.embed(str(files[0])), by_path)
    # the index's one-image path (search queries) gives the same vector
    assert torch.equal(embedder.model.embed_image(Image.open(files[0])), by_path)


def test_lists_and_batches_keep_order_whatever_the_batch_size(embedder, files):
    one_by_one = torch.cat([embedder.embed(f) for f in files])
    for batch_size in (1, 2, 32):
        assert torch.allclose(embedder.embed(files, batch_size=batch_size), one_by_one, atol=1e-5)
    batch = torch.stack([embedder.preprocess(f) for f in files[:3]])
    mixed = embedder.embed([batch, Image.open(files[3]), files[4]])
    assert torch.allclose(mixed, one_by_one, atol=1e-5)
    assert embedder.embed([]).shape == (0, 32)


def test_whitening_beside_the_checkpoint_is_applied(embedder, files):
    x = embedder.preprocess(files[0])[None]
    with torch.no_grad():
        raw = embedder.model.module.embed(x)
    assert embedder.model.whitening is not None
    assert not torch.allclose(raw, embedder.embed(x), atol=1e-3)
    assert torch.allclose(embedder.model.post_process(raw), embedder.embed(x))


def test_bad_embedder_input_is_one_line(embedder, tmp_path):
    one_line_error(lambda: Embedder.load(tmp_path / "none.ckpt"), "not found")
    one_line_error(lambda: Embedder.load(tmp_path / "none.onnx"), "not found")
    one_line_error(
        lambda: Embedder.load(tmp_path / "model.bin"),
        r"must be a checkpoint \(\.ckpt\), a model file .* or an ONNX",
    )
    c, h, w = embedder.input_shape
    assert (c, h, w) == (3, 64, 64)
    for bad in (torch.zeros(2, h, w), torch.zeros(1, 1, h, w), torch.zeros(c, h + 1, w), torch.zeros(w)):
        text = one_line_error(lambda bad=bad: embedder.embed(bad), "is not the model's input")
        assert str(tuple(bad.shape)) in text
    one_line_error(
        lambda: embedder.embed(torch.zeros(c, h, w, dtype=torch.uint8)), "is not the model's input"
    )
    one_line_error(lambda: embedder.embed([tmp_path / "missing.jpg"]), "missing.jpg: cannot read image")
    one_line_error(lambda: embedder.embed(42), "cannot embed a int")


def test_model_files_by_suffix_or_kind(embedder):
    assert model_files("a/m.ckpt") == (Path("a/m.ckpt"), None)
    assert model_files("m.ONNX") == (None, Path("m.ONNX"))
    assert model_files(None, ckpt="x.bin") == ("x.bin", None)  # the CLI names the kind: no suffix rule
    assert model_files(embedder) == (CKPT.resolve(), None)
    one_line_error(lambda: model_files("m.onnx", ckpt="x.ckpt"), "pass the model once")


def test_index_queries_and_bad_input(embedder, files, tmp_path):
    one_line_error(lambda: Index.open(tmp_path / "nothing"), "not found")
    (tmp_path / "photos").mkdir()
    for f in files:
        shutil.copy(f, tmp_path / "photos" / f.name)
    index = Index.build(
        tmp_path / "photos", tmp_path / "idx", embedder, trainer_options={"accelerator": "cpu"}
    )
    assert index.report["count"] == len(index) == 5 and index.embedder.path == CKPT.resolve()
    query = (tmp_path / "photos" / files[1].name).resolve()
    hits = index.search(query, k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].path == str(query)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    vector = embedder.embed(query)
    assert [h.path for h in index.search(vector, k=3)] == [h.path for h in hits]
    one_line_error(lambda: index.search(torch.zeros(7)), r"query vectors of shape \(1, 7\) do not match")
    one_line_error(lambda: index.search(torch.zeros(2, 32)), "search takes one query, got 2")
    one_line_error(lambda: index.search(vector, crop="0,0,5,5"), "crop applies to image files")
    one_line_error(lambda: index.search(query, rerank="magic"), "--rerank must be one of")
    one_line_error(lambda: index.search([query]), "cannot search by a list")


def test_import_stays_light():
    code = (
        "import sys, cbir_lightning; assert 'torch' not in sys.modules; print(cbir_lightning.Index.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "Index", proc.stderr
