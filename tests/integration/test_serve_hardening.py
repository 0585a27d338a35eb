"""``serve`` under hostile or unlucky use, against real servers on 127.0.0.1: pixel bombs and other formats
refused before decoding, no server paths in errors, Host allow-list, token, a slow search not stalling the
others, a bounded queue, and a rebuilt index served without a restart."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers.benchmarks import run_benchmark
from helpers.search import LANDMARKS, other_checkpoint, photo_folder
from PIL import Image, ImageFile

from benchmarks.serve_load import free_port, png_bomb  # the benchmark's own hostile uploads
from cbir_lightning.search.index import build_index
from cbir_lightning.search.query import SearchIndex, search_image
from cbir_lightning.web.app import create_app

CPU = {"accelerator": "cpu", "enable_progress_bar": False}
QUERY = LANDMARKS / "sacre_coeur" / "10265353_3838484249.jpg"


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def multipart(fields: dict, file: bytes | None = None, filename: str = "q.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    if file is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + file
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(url: str, data: bytes | None = None, headers: dict | None = None, ctype: str | None = None):
    """``(status, body text, headers)`` of one request (no redirects followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if ctype:
        request.add_header("Content-Type", ctype)
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=60) as response:
            return response.status, response.read().decode("latin-1"), response.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("latin-1"), err.headers


def search(url: str, fields: dict, file: bytes | None = None, filename: str = "q.png", headers=None):
    body, ctype = multipart(fields, file, filename)
    return call(url + "/api/search", body, headers, ctype)


def wait_up(url: str, alive, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/api/indexes", timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # it answers (401 when a token is needed)
        except (urllib.error.URLError, ConnectionError):
            if not alive() or time.monotonic() > deadline:
                pytest.fail("server did not start")
            time.sleep(0.2)


def peak_rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmHWM"].split()[0]) / 1024


class ThreadServer:
    """uvicorn serving ``app`` on a free loopback port in a daemon thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_up(self.url, self.thread.is_alive, timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def built(tiny_run, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("hardening")
    photos = photo_folder(work / "photos", count=12)
    build_index(tiny_run["ckpt"], photos, work / "idx", trainer_options=CPU)
    return {"work": work, "photos": photos, "index": work / "idx", "ckpt": tiny_run["ckpt"]}


@contextmanager
def serve_process(index: Path, work: Path, *extra: str, env: dict | None = None):
    """``cbir-lightning serve --index INDEX`` in a subprocess (its own memory to measure), logging to
    ``work/serve.log``: ``{"url", "pid", "log"}``."""
    port = free_port()
    log = open(work / "serve.log", "w")  # noqa: SIM115 (closed below)
    command = [sys.executable, "-m", "cbir_lightning", "serve", "--index", str(index), "--port", str(port)]
    proc = subprocess.Popen(
        [*command, *extra],
        cwd=work,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, lambda: proc.poll() is None)
        yield {"url": url, "pid": proc.pid, "log": work / "serve.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def cli_server(built):
    with serve_process(built["index"], built["work"]) as server:
        yield server


def test_pixel_bombs_and_other_formats_are_refused_before_decoding(cli_server):
    """Small files declaring 89 MP (267 MB decoded): 413 for PNG, 415 for GIF/TIFF, memory flat."""
    url, pid = cli_server["url"], cli_server["pid"]
    assert search(url, {"item": 0})[0] == 200  # model loaded: the baseline includes it
    before = peak_rss_mb(pid)
    big = Image.new("RGB", (9000, 9900))
    bombs = [
        (png_bomb(9000, 9900), "bomb.png", 413),
        (encoded(big, "TIFF", compression="tiff_deflate"), "bomb.tif", 415),
        (encoded(big.convert("P"), "GIF"), "bomb.gif", 415),
    ]
    del big
    assert all(len(data) < 2_000_000 for data, _, _ in bombs)
    start = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: search(url, {}, b[0], b[1]), bombs * 2))
    elapsed = time.monotonic() - start
    for (status, body, _), (_, name, expected) in zip(answers, bombs * 2, strict=True):
        assert status == expected, (name, body)
        assert ("too large" if expected == 413 else "not a JPEG, PNG or WebP") in body
    assert peak_rss_mb(pid) - before < 100, "the server decoded a bomb"
    assert elapsed < 20


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO", "SVG"])
def test_only_jpeg_png_webp_are_decoded(cli_server, fmt):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    if fmt == "SVG":
        data = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="9"/></svg>'
    else:
        data = encoded(image, fmt)
    status, body, _ = search(cli_server["url"], {}, data, f"q.{fmt.lower()}")
    assert status == 415 and "not a JPEG, PNG or WebP image" in body
    status, body, _ = search(cli_server["url"], {"top_k": 3}, encoded(image, "WEBP"), "q.webp")
    assert status == 200 and len(json.loads(body)["results"]) == 3


def test_host_header_must_be_allowed(cli_server):
    url = cli_server["url"]
    port = url.rsplit(":", 1)[1]
    assert call(url + "/api/indexes", headers={"Host": "evil.example"})[0] == 400
    assert call(url + "/", headers={"Host": f"evil.example:{port}"})[0] == 400
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert call(url + "/api/indexes", headers={"Host": host})[0] == 200, host


def test_non_loopback_host_needs_a_token_or_insecure(built, monkeypatch):
    """Refused with the fix before anything is bound; a token (flag or environment) or --insecure starts."""
    import uvicorn

    from cbir_lightning.cli.search_commands import serve
    from cbir_lightning.errors import CbirError

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw)))
    monkeypatch.delenv("CBIR_SERVE_TOKEN", raising=False)
    with pytest.raises(CbirError, match="--token .*CBIR_SERVE_TOKEN.*--insecure"):
        serve(str(built["index"]), host="0.0.0.0")
    assert not started
    serve(str(built["index"]), host="0.0.0.0", insecure=True)
    serve(str(built["index"]), host="192.0.2.1", token="t0ken")
    monkeypatch.setenv("CBIR_SERVE_TOKEN", "t0ken")
    serve(str(built["index"]), host="192.0.2.1")
    assert [kw["host"] for _, kw in started] == ["0.0.0.0", "192.0.2.1", "192.0.2.1"]
    with ThreadServer(started[-1][0]) as server:  # the token from the environment is required
        assert call(server.url + "/api/indexes")[0] == 401
        assert call(server.url + "/api/indexes", headers={"Authorization": "Bearer t0ken"})[0] == 200


def test_token_is_required_when_configured(built):
    app = create_app([built["index"]], token="s3cret-token")
    with ThreadServer(app) as server:
        url = server.url
        assert call(url + "/api/indexes")[0] == 401
        assert call(url + "/api/indexes", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert search(url, {"item": 0})[0] == 401
        assert call(url + "/api/indexes/0/images/0")[0] == 401
        assert call(url + "/")[0] == 200  # the page itself holds no data
        assert call(url + "/api/indexes", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert call(url + "/?token=wrong")[0] == 401
        status, _, headers = call(url + "/?token=s3cret-token")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        jar = {"Cookie": cookie.split(";")[0]}
        assert call(url + "/api/indexes", headers=jar)[0] == 200
        assert call(url + "/api/indexes/0/images/0", headers=jar)[0] == 200
        assert search(url, {"item": 0}, headers=jar)[0] == 200


def test_errors_reveal_no_server_paths(built, tmp_path, caplog):
    """A deleted item, then a checkpoint that is gone: generic answers, details in the log only."""
    photos = photo_folder(tmp_path / "photos", count=4)
    ckpt = Path(shutil.copy(built["ckpt"], tmp_path / "model.ckpt"))
    build_index(ckpt, photos, tmp_path / "idx", trainer_options=CPU)
    index = SearchIndex.open(tmp_path / "idx")
    index.item_path(1).unlink()
    with ThreadServer(create_app([tmp_path / "idx"])) as server:
        answers = [search(server.url, {"item": 1}), call(server.url + "/api/indexes/0/images/1")]
        ckpt.unlink()
        answers.append(search(server.url, {"item": 0}))  # the model is loaded on the first search
    assert [status for status, _, _ in answers[:2]] == [404, 404]
    assert answers[2][0] == 500
    for _, body, _ in answers:
        assert str(tmp_path) not in body and "/tmp" not in body and ".ckpt" not in body, body
    error_id = json.loads(answers[2][1])["error_id"]
    logged = [r.getMessage() for r in caplog.records if r.name == "cbir_lightning.web"]
    assert any(error_id in m and str(ckpt) in m for m in logged), logged  # the details are in the log


@pytest.fixture
def slow_decoding(monkeypatch):
    """Every Pillow decode takes ``delay["s"]`` seconds more (a big upload), in this process."""
    load, delay = ImageFile.ImageFile.load, {"s": 1.5}

    def slow_load(self):
        if self.tile:  # not decoded yet
            time.sleep(delay["s"])
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", slow_load)
    return delay


def test_a_slow_upload_does_not_stall_other_requests(built, slow_decoding):
    query, slow_decoding["s"] = QUERY.read_bytes(), 3.0
    with ThreadServer(create_app([built["index"]])) as server, ThreadPoolExecutor(2) as pool:
        slow = pool.submit(search, server.url, {"top_k": 3}, query, "q.jpg")
        time.sleep(0.5)  # the upload is decoding now
        start = time.monotonic()
        assert call(server.url + "/api/indexes")[0] == 200
        assert call(server.url + "/api/indexes/0/items")[0] == 200
        fast = time.monotonic() - start
        assert slow.result(timeout=60)[0] == 200
    assert fast < 1.0, f"/api/indexes took {fast:.2f} s while an upload was decoding"


def test_searches_beyond_the_queue_get_503(built, slow_decoding):
    query = QUERY.read_bytes()
    app = create_app([built["index"]], max_concurrent=1, max_waiting=1)
    with ThreadServer(app) as server, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: search(server.url, {"top_k": 2}, query, "q.jpg"), range(4)))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, answers
    refused = next(a for a in answers if a[0] == 503)
    assert refused[2]["Retry-After"] and "busy" in refused[1]


def test_a_rebuilt_index_is_served_without_restart(built, tmp_path):
    """New images, then another model: /api/indexes and search follow within seconds."""
    first, second = photo_folder(tmp_path / "a", count=8), tmp_path / "b"
    second.mkdir()
    for src in sorted(first.glob("*.jpg"))[:5]:
        shutil.copy(src, second / src.name)
    build_index(built["ckpt"], first, tmp_path / "idx", trainer_options=CPU)
    with ThreadServer(create_app([tmp_path / "idx"])) as server:
        assert json.loads(call(server.url + "/api/indexes")[1])[0]["count"] == 8
        assert search(server.url, {"item": 0})[0] == 200
        build_index(built["ckpt"], second, tmp_path / "idx", trainer_options=CPU)
        assert wait_for_count(server.url, 5), "the rebuilt index was not picked up"
        status, body, _ = search(server.url, {"item": 4, "top_k": 5})
        assert status == 200 and sorted(r["id"] for r in json.loads(body)["results"]) == list(range(5))

        other = other_checkpoint(built["ckpt"], tmp_path / "other.ckpt")
        build_index(other, first, tmp_path / "idx", trainer_options=CPU)
        assert wait_for_count(server.url, 8)
        status, body, _ = search(server.url, {"top_k": 3}, QUERY.read_bytes(), "q.jpg")
    index = SearchIndex.open(tmp_path / "idx")
    expected = search_image(index, index.load_model(), Image.open(QUERY), top_k=3)
    assert status == 200
    assert [r["score"] for r in json.loads(body)["results"]] == pytest.approx(
        [r["score"] for r in expected], abs=1e-4
    )


def wait_for_count(url: str, count: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if json.loads(call(url + "/api/indexes")[1])[0]["count"] == count:
            return True
        time.sleep(0.2)
    return False


def test_serve_load_benchmark_prints_a_json_line(tmp_path):
    args = ["--requests", "24", "--concurrency", "4", "--camera-uploads", "4"]
    result = run_benchmark("serve_load.py", *args, cwd=tmp_path)
    assert result["benchmark"] == "serve_load" and result["good_failed"] == 0
    assert result["one_camera_status"] == 200 and result["camera_ok"] == 4 and result["camera_failed"] == 0
    assert result["camera_pixels"] == 24_000_000 and 0 < result["camera_peak_rss_mb"] < 2048
    assert result["good_ok"] > 0 and result["good_p95_ms"] >= result["good_p50_ms"] > 0
    assert sum(result["bad_statuses"].values()) > 0 and "200" not in result["bad_statuses"]
    assert 0 < result["server_peak_rss_mb"] < 2048


def _served(url: str, j: int) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"{url}/api/indexes/0/images/{j}", timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_files_swapped_under_a_running_server_are_not_served(tiny_run, tmp_path):
    """Under a real ``serve``: an indexed photo replaced by a symlink to a secret or to /etc/passwd, a folder
    replaced by a symlink to a copy outside, a photo rewritten: 404 for each (by image and by search), the
    untouched photos as before."""
    photos = photo_folder(tmp_path / "photos", count=14)  # 10 in the top folder, 4 in sacre_coeur/
    build_index(tiny_run["ckpt"], photos, tmp_path / "idx", trainer_options=CPU)
    items = [item["path"] for item in SearchIndex.open(tmp_path / "idx").items]
    secret, outside = tmp_path / "secret.txt", tmp_path / "outside"
    secret.write_text("root:x:0:0:the secret:/root:/bin/bash\n")
    shutil.copytree(photos / "sacre_coeur", outside)
    with serve_process(tmp_path / "idx", tmp_path) as server:
        url = server["url"]
        for j, rel in enumerate(items):
            assert _served(url, j) == (200, (photos / rel).read_bytes()), rel
        top = [j for j, rel in enumerate(items) if "/" not in rel]
        nested = [j for j, rel in enumerate(items) if rel.startswith("sacre_coeur/")]
        swapped = {top[0]: secret, top[1]: Path("/etc/passwd")}
        for j, target in swapped.items():  # swapped in atomically, as an attacker would
            link = photos / f".{j}.link"
            link.symlink_to(target)
            os.replace(link, photos / items[j])
        (photos / "sacre_coeur").rename(photos / "sacre_coeur.real")
        (photos / "sacre_coeur").symlink_to(outside, target_is_directory=True)
        rewritten = top[2]
        Image.open(photos / items[top[3]]).save(photos / items[rewritten])
        for j in [*swapped, *nested, rewritten]:
            status, body = _served(url, j)
            assert status == 404 and b"secret" not in body and b"root:" not in body, (items[j], body)
            status, body, _ = search(url, {"item": j, "top_k": 2})
            assert status == 404 and "secret" not in body, (items[j], body)
        for j in top[3:]:
            assert _served(url, j) == (200, (photos / items[j]).read_bytes())
        assert search(url, {"item": top[3], "top_k": 2})[0] == 200


@pytest.mark.parametrize("crop", ["inf,0,1,1", "0,0,nan,1", "1e400,0,5,5", "-inf,0,1,1"])
def test_a_crop_that_is_not_finite_is_422(cli_server, crop):
    status, body, _ = search(cli_server["url"], {"item": 0, "crop": crop})
    assert status == 422 and "crop must be x0,y0,x1,y1" in body, (crop, status, body)


def test_the_token_comes_from_a_file_and_is_not_on_the_command_line(built, tmp_path):
    """``--token`` is visible in ``ps``: ``--token-file`` keeps it off the command line (``--help`` says
    so), and the server requires it."""
    token = "file-t0ken-" + uuid.uuid4().hex
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    helped = subprocess.run(
        [sys.executable, "-m", "cbir_lightning", "serve", "--help"], capture_output=True, text=True
    )
    assert "--token_file" in helped.stdout and "CBIR_SERVE_TOKEN" in helped.stdout
    assert "visible in ``ps``" in helped.stdout
    with serve_process(built["index"], tmp_path, "--token-file", str(tmp_path / "token")) as server:
        cmdline = Path(f"/proc/{server['pid']}/cmdline").read_bytes()
        assert token.encode() not in cmdline
        assert call(server["url"] + "/api/indexes")[0] == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert call(server["url"] + "/api/indexes", headers=bearer)[0] == 200
