"""``cbir-lightning serve`` end to end in headless Chromium (Playwright): upload, crop, results, refusals."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.search import LANDMARKS, photo_folder
from PIL import Image

from cbir_lightning.search.files import open_image
from cbir_lightning.search.index import build_index
from cbir_lightning.search.query import SearchIndex, search_image

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MAX_UPLOAD_MB = 0.6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    work = tmp_path_factory.mktemp("web")
    photos = photo_folder(work / "photos", count=12)
    build_index(tiny_run["ckpt"], photos, work / "idx", trainer_options={"accelerator": "cpu"})
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cbir_lightning",
            "serve",
            "--index",
            str(work / "idx"),
            "--port",
            str(port),
            "--max-upload-mb",
            str(MAX_UPLOAD_MB),
        ],
        cwd=work,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url + "/api/indexes", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("server did not start: " + proc.stdout.read()[-2000:])
            time.sleep(0.3)
    yield {"url": url, "work": work, "photos": photos, "index": work / "idx"}
    proc.terminate()
    proc.wait(timeout=30)


def status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as err:
        return err.code


def test_only_indexed_files_are_served_by_id(server):
    url = server["url"]
    assert status(url + "/api/indexes/0/images/0") == 200
    assert status(url + "/api/indexes/0/images/12") == 404  # 12 items: ids 0..11
    assert status(url + "/api/indexes/0/images/..%2F..%2F..%2Fetc%2Fpasswd") in (404, 422)
    assert status(url + "/api/indexes/0/images/-1") == 404
    assert status(url + "/..%2F..%2Fetc%2Fpasswd") == 404
    assert status(url + "/api/indexes/1/items") == 404


def test_chunked_upload_without_length_is_refused_while_streaming(server):
    """A client that announces no Content-Length cannot make the server store an oversized body."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(server["url"])
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    conn.putrequest("POST", "/api/search")
    conn.putheader("Content-Type", "multipart/form-data; boundary=xyz")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n\r\n'
    chunk = b"x" * 65536
    try:
        conn.send(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(64):  # 4 MiB of one file part, far over the 0.6 MB limit
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the client finished sending
    response = conn.getresponse()
    assert response.status == 413 and b"Too Large" in response.read()
    conn.close()


def test_upload_crop_and_results_grid_in_chromium(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed (make test installs it when run as root)")
    query = LANDMARKS / "sacre_coeur" / "10265353_3838484249.jpg"  # not in the index
    not_image = tmp_path / "holiday.jpg"
    not_image.write_text("this is text, not a JPEG")
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(big)  # ~1.1 MB of noise
    assert big.stat().st_size > MAX_UPLOAD_MB * 1024 * 1024
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(server["url"] + "/")
            page.wait_for_selector("#collection .pick img")
            assert page.locator("#collection .pick").count() == 12
            page.set_input_files("#file", str(query))
            page.wait_for_function("document.getElementById('canvas').width !== 400")
            box = page.locator("#canvas").bounding_box()
            page.mouse.move(box["x"] + 20, box["y"] + 15)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7, steps=5)
            page.mouse.up()
            crop = page.locator("#crop-text").inner_text().removeprefix("crop ")
            x0, y0, x1, y1 = map(int, crop.split(","))
            assert 0 <= x0 < x1 and 0 <= y0 < y1
            page.fill("#topk", "4")
            page.click("#search")
            page.wait_for_selector("#results .result")
            names = page.locator("#results .result .name").all_inner_texts()
            scores = [float(s) for s in page.locator("#results .result .score").all_inner_texts()]
            assert page.locator("#results .result img").count() == 4
            index = SearchIndex.open(server["index"])
            expected = search_image(index, index.load_model(), open_image(query), top_k=4, crop=crop)
            assert names == [Path(r["path"]).name for r in expected]
            assert np.allclose(scores, [r["score"] for r in expected], atol=1e-3)
            assert page.locator("#error").inner_text() == ""

            page.set_input_files("#file", str(not_image))
            page.click("#search")
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert "not a JPEG, PNG or WebP image" in page.locator("#error").inner_text()
            assert page.locator("#results .result").count() == 0

            page.set_input_files("#file", str(big))
            page.click("#search")
            page.wait_for_function("document.getElementById('error').textContent.includes('too large')")

            page.locator("#collection .pick img").nth(3).click()  # a query picked from the collection
            page.click("#search")
            page.wait_for_selector("#results .result")
            assert page.locator("#results .result").count() == 4
            assert page.locator("#error").inner_text() == ""
        finally:
            browser.close()
