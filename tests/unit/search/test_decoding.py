"""Decoding for a model: a large JPEG is decoded reduced (Pillow's draft) to at least twice the model's
size, the same way in ``index`` (header, then decode) and ``serve`` (an upload); the pixel cap is read
from the header."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.serve_load import png_bomb
from cbir_lightning.search.embed import image_header
from cbir_lightning.search.files import DRAFT_ABOVE_PIXELS, Decoding, open_image
from cbir_lightning.web.uploads import UploadRefused, decode_upload


def _jpeg(path, size) -> bytes:
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)).resize(size)
    coarse.save(path, "JPEG", quality=85)
    return path.read_bytes()


def test_a_camera_jpeg_decodes_reduced_alike_in_index_and_serve(tmp_path):
    data = _jpeg(tmp_path / "camera.jpg", (3000, 2000))  # 6 MP, above DRAFT_ABOVE_PIXELS
    assert 3000 * 2000 > DRAFT_ABOVE_PIXELS
    header = image_header(tmp_path / "camera.jpg", Decoding(25_000_000, 28))
    assert header == ("RGB", 375, 250)  # 1/8: both sides still at least 2 * 28
    indexed = open_image(tmp_path / "camera.jpg", None, 25_000_000, 28)
    uploaded = decode_upload(data, 25_000_000, 28)
    assert indexed.size == uploaded.size == (375, 250)
    assert np.array_equal(np.asarray(indexed), np.asarray(uploaded))
    assert image_header(tmp_path / "camera.jpg", Decoding(25_000_000, 224)) == ("RGB", 750, 500)
    assert decode_upload(data, 25_000_000, 1024).size == (3000, 2000)  # 1/2 would be under 2 * 1024
    assert decode_upload(data, 25_000_000, None).size == (3000, 2000)  # no model size: in full


def test_small_jpegs_and_other_formats_decode_in_full(tmp_path):
    data = _jpeg(tmp_path / "photo.jpg", (1024, 768))
    assert decode_upload(data, 25_000_000, 28).size == (1024, 768)
    png = io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(png, "PNG")
    assert decode_upload(png.getvalue(), 25_000_000, 28).size == (3000, 2000)


def test_pixel_cap_is_read_from_the_header(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb(9400, 9400))  # 88 MP, under Pillow's own limit
    assert image_header(tmp_path / "bomb.png", Decoding(25_000_000, 28)) == (
        "image too large (9400x9400 pixels, limit 25000000)"
    )
    with pytest.raises(UploadRefused, match="image too large"):
        decode_upload((tmp_path / "bomb.png").read_bytes(), 25_000_000, 28)
