"""``cbir-lightning serve`` under a mixed load: good searches among hostile uploads.

Starts ``serve`` in a subprocess on 127.0.0.1 (a free port) over a small index it builds itself (an
untrained tiny Koch-net checkpoint and generated images, or ``--ckpt``/``--images``), then sends
``--requests`` searches, ``--concurrency`` at a time, a ``--bad-share`` of them hostile: pixel bombs
(small PNGs declaring 9000x9900 pixels), GIF/BMP/TIFF/SVG files, corrupt JPEGs and bodies over the upload
limit, and a ``--near-cap-share`` of 23.6 MP PNGs just under the pixel cap (decoded in full: they exercise
the bound on concurrent decoding). Good searches (an uploaded JPEG, an indexed item, a near-cap PNG;
latency percentiles are of the first two) must all answer 200, and the server's peak RSS
(``VmHWM``) must stay under 2 GB; the exit status is 1 otherwise.

Before the mixed load, camera photos: one 24 MP JPEG upload (6000x4000, a full-frame camera's size; the
server's peak after it is ``one_camera_peak_rss_mb``), then ``--camera-uploads`` of them sent at once (a
client answered 503 "busy" tries again after its Retry-After, as the page does), each of which must end in
200; ``camera_peak_rss_mb`` is the server's peak after them.

Prints one JSON line last: p50/p95 latency of the good searches, the status counts of the bad ones (by
kind too), the camera uploads' outcome, the server's peak RSS.

    .venv/bin/python benchmarks/serve_load.py [--requests 200] [--concurrency 8] [--bad-share 0.4]
        [--camera-uploads 50]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cbir_lightning.search.manifest import read_manifest
from cbir_lightning.web.uploads import DEFAULT_MAX_UPLOAD_PIXELS

MAX_UPLOAD_MB = 2
RSS_LIMIT_MB = 2048
BAD_KINDS = ("png_bomb", "gif", "bmp", "tiff", "svg", "corrupt_jpeg", "oversized")
GOOD_KINDS = ("upload", "item", "near_cap")
NEAR_CAP = (5900, 4000)  # 23.6 MP, a 3:2 camera photo under serve's default cap
CAMERA = (6000, 4000)  # 24 MP: a full-frame camera's JPEG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bomb(width: int = 9000, height: int = 9900) -> bytes:
    """A valid RGB PNG of ``width x height`` black pixels (a few hundred KB), built without the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(1 + 3 * width)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def photo(rng: np.random.Generator, size=(160, 120)) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def camera_jpeg(rng: np.random.Generator, size=CAMERA) -> bytes:
    """A camera-size JPEG of smooth content with grain (about 1 MB, under the benchmark's upload limit)."""
    coarse = Image.fromarray(rng.integers(0, 255, (30, 45, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    grain = rng.integers(-3, 4, (size[1], size[0], 1), dtype=np.int16)
    pixels = np.clip(np.asarray(coarse, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=80)
    return out.getvalue()


def payloads(rng: np.random.Generator) -> dict[str, tuple[bytes, str]]:
    """The upload of each request kind: ``(bytes, file name)``."""
    small = photo(rng, (64, 64))
    good = encoded(photo(rng), "JPEG")
    return {
        "upload": (good, "q.jpg"),
        "near_cap": (png_bomb(*NEAR_CAP), "big.png"),  # just under the pixel cap: decoded in full
        "png_bomb": (png_bomb(), "bomb.png"),
        "gif": (encoded(small, "GIF"), "q.gif"),
        "bmp": (encoded(small, "BMP"), "q.bmp"),
        "tiff": (encoded(small, "TIFF"), "q.tif"),
        "svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9"/></svg>',
            "q.svg",
        ),
        "corrupt_jpeg": (good[: len(good) // 3], "q.jpg"),
        "oversized": (os.urandom(MAX_UPLOAD_MB * 1024 * 1024 + 300_000), "q.jpg"),
        "camera": (camera_jpeg(rng), "camera.jpg"),
    }


def build(work: Path, ckpt: str | None, images: str | None, count: int) -> Path:
    """The index to serve: ``--ckpt``/``--images``, or an untrained tiny checkpoint over generated images."""
    from cbir_lightning.search.index import build_index

    if ckpt is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from search import tiny_checkpoint

        ckpt = tiny_checkpoint(work / "tiny.ckpt")
    if images is None:
        images = work / "images"
        images.mkdir()
        rng = np.random.default_rng(1)
        for i in range(count):
            photo(rng, (105, 105)).save(images / f"{i:04d}.png")
    build_index(
        ckpt, images, work / "idx", trainer_options={"accelerator": "cpu", "enable_progress_bar": False}
    )
    return work / "idx"


def start_server(index: Path, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = open(work / "serve.log", "w")  # noqa: SIM115 (the server's stdout/stderr for its lifetime)
    args = ["serve", "--index", str(index), "--port", str(port), "--max-upload-mb", str(MAX_UPLOAD_MB)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir_lightning", *args],
        cwd=work,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start: " + (work / "serve.log").read_text()[-2000:])


def multipart(fields: dict, upload: tuple[bytes, str] | None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    if upload is not None:
        data, name = upload
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_search(port: int, fields: dict, upload: tuple[bytes, str] | None) -> tuple[int | str, float]:
    """``(status or the connection error's name, seconds)`` of one search."""
    status, seconds, _ = post_search_once(port, fields, upload)
    return status, seconds


def post_search_once(port: int, fields: dict, upload) -> tuple[int | str, float, float]:
    """``(status or the connection error's name, seconds, Retry-After seconds or 0)`` of one search."""
    body, ctype = multipart(fields, upload)
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    retry_after = 0.0
    try:
        conn.request("POST", "/api/search", body, {"Content-Type": ctype})
        response = conn.getresponse()
        response.read()
        status: int | str = response.status
        retry_after = float(response.headers.get("Retry-After") or 0)
    except OSError as err:  # the server refused an oversized body and closed while we were sending
        status = type(err).__name__
    finally:
        conn.close()
    return status, time.perf_counter() - start, retry_after


def search_until_served(port: int, fields: dict, upload, attempts: int = 30) -> tuple[int | str, float, int]:
    """``(final status, seconds in all, 503 answers)``: retried after Retry-After while the server is busy."""
    start, busy = time.perf_counter(), 0
    for _ in range(attempts):
        status, _, retry_after = post_search_once(port, fields, upload)
        if status != 503:
            break
        busy += 1
        time.sleep(max(retry_after, 0.2))
    return status, time.perf_counter() - start, busy


def camera_load(port: int, upload: tuple[bytes, str], count: int, pid: int) -> dict:
    """One camera-size upload, then ``count`` at once; the server's peak RSS after each phase."""
    one = search_until_served(port, {"top_k": 5}, upload)
    one_peak = peak_rss_mb(pid)
    with ThreadPoolExecutor(count) as pool:
        outcomes = list(pool.map(lambda _: search_until_served(port, {"top_k": 5}, upload), range(count)))
    times = [t * 1e3 for s, t, _ in outcomes if s == 200]
    return {
        "camera_upload_bytes": len(upload[0]),
        "camera_pixels": CAMERA[0] * CAMERA[1],
        "one_camera_status": one[0],
        "one_camera_peak_rss_mb": one_peak,
        "camera_concurrent": count,
        "camera_ok": len(times),
        "camera_failed": count - len(times),
        "camera_busy_answers": sum(b for _, _, b in outcomes),
        "camera_p50_ms": float(np.percentile(times, 50)) if times else None,
        "camera_peak_rss_mb": peak_rss_mb(pid),
    }


def schedule(
    requests: int, bad_share: float, near_cap_share: float, items: int, seed: int
) -> list[tuple[str, dict]]:
    """``(kind, form fields)`` per request: bad kinds in turn, near-cap uploads, small uploads, item picks."""
    rng = random.Random(seed)
    plan = []
    for _ in range(requests):
        draw = rng.random()
        if draw < bad_share:
            plan.append((BAD_KINDS[sum(k in BAD_KINDS for k, _ in plan) % len(BAD_KINDS)], {}))
        elif draw < bad_share + near_cap_share:
            plan.append(("near_cap", {"top_k": 5}))
        elif rng.random() < 0.5:
            plan.append(("upload", {"top_k": 5}))
        else:
            plan.append(("item", {"top_k": 5, "item": rng.randrange(items)}))
    return plan


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(port: int, plan: list, data: dict, concurrency: int, max_seconds: float) -> list:
    """``(kind, status, seconds)`` per request; requests not started within ``max_seconds`` are dropped."""
    deadline = time.monotonic() + max_seconds

    def one(entry):
        kind, fields = entry
        if time.monotonic() > deadline:
            return kind, "not_run", 0.0
        return (kind, *post_search(port, fields, data.get(kind)))

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, plan))


def summarize(outcomes: list, pid: int, elapsed: float) -> dict:
    good = [(s, t) for k, s, t in outcomes if k in ("upload", "item")]
    good_times = [t * 1e3 for s, t in good if s == 200]
    near = [(s, t) for k, s, t in outcomes if k == "near_cap"]
    near_times = [t * 1e3 for s, t in near if s == 200]
    bad = [(k, str(s)) for k, s, _ in outcomes if k not in GOOD_KINDS]
    by_kind: dict[str, Counter] = {}
    for kind, status in bad:
        by_kind.setdefault(kind, Counter())[status] += 1
    return {
        "benchmark": "serve_load",
        "requests": len(outcomes),
        "good_ok": len(good_times),
        "good_failed": len(good) - len(good_times) + len(near) - len(near_times),
        "good_p50_ms": float(np.percentile(good_times, 50)) if good_times else None,
        "good_p95_ms": float(np.percentile(good_times, 95)) if good_times else None,
        "near_cap_ok": len(near_times),
        "near_cap_p50_ms": float(np.percentile(near_times, 50)) if near_times else None,
        "bad_statuses": dict(Counter(s for _, s in bad)),
        "bad_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "server_peak_rss_mb": peak_rss_mb(pid),
        "seconds": elapsed,
    }


def main() -> None:
    assert NEAR_CAP[0] * NEAR_CAP[1] <= DEFAULT_MAX_UPLOAD_PIXELS, "near-cap uploads must be under the cap"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bad-share", type=float, default=0.4)
    parser.add_argument("--near-cap-share", type=float, default=0.05, help="23.6 MP uploads (under the cap)")
    parser.add_argument(
        "--ckpt", default=None, help="checkpoint to index with (default: an untrained tiny one)"
    )
    parser.add_argument("--images", default=None, help="images to index (default: generated)")
    parser.add_argument("--count", type=int, default=32, help="generated images")
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--camera-uploads", type=int, default=50, help="24 MP JPEG uploads sent at once")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        index = build(work, args.ckpt, args.images, args.count)
        items = len(read_manifest(index)[0]["items"])
        data = payloads(np.random.default_rng(args.seed))
        plan = schedule(args.requests, args.bad_share, args.near_cap_share, items, args.seed)
        proc, port = start_server(index, work)
        try:
            post_search(port, {"top_k": 5, "item": 0}, None)  # the model is loaded
            idle = peak_rss_mb(proc.pid)
            camera = camera_load(port, data["camera"], args.camera_uploads, proc.pid)
            start = time.monotonic()
            outcomes = run_load(port, plan, data, args.concurrency, args.max_seconds)
            result = {**summarize(outcomes, proc.pid, time.monotonic() - start), "idle_peak_rss_mb": idle}
            result.update(camera)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    good = result["good_failed"] == 0 and result["camera_failed"] == 0
    result["ok"] = good and result["server_peak_rss_mb"] < RSS_LIMIT_MB
    print(
        f"{result['good_ok']} good searches: p50 {result['good_p50_ms']:.1f} ms, "
        f"p95 {result['good_p95_ms']:.1f} ms, "
        f"{result['good_failed']} failed; bad: {result['bad_statuses']}; "
        f"{result['camera_ok']}/{args.camera_uploads} camera uploads at once answered "
        f"({result['camera_busy_answers']} busy answers retried), peak RSS after one "
        f"{result['one_camera_peak_rss_mb']:.0f} MB, after all {result['camera_peak_rss_mb']:.0f} MB; "
        f"server peak RSS {result['server_peak_rss_mb']:.0f} MB (idle {idle:.0f} MB)"
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
