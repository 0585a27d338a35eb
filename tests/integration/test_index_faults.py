"""Faults of ``cbir-lightning index`` with real processes: SIGKILL at several points, concurrent writers,
a reader searching while the index is rebuilt, and a user's folder passed as ``--out``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from helpers.cli import run_cli
from helpers.search import photo_folder
from PIL import Image

from cbir_lightning.search.index import build_index
from cbir_lightning.search.manifest import EMBEDDINGS, MANIFEST, current_version, read_manifest
from cbir_lightning.search.query import SearchIndex

CPU = {"accelerator": "cpu", "enable_progress_bar": False}
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
REFUSAL = re.compile(
    r"^cbir-lightning: error: another `cbir-lightning index` run \(pid \d+ on host .+, started .+\) "
    r"is writing .+; wait for it to finish$"
)

# python -c: take the lock of folder argv[1] in each of argv[2] trials at the time slots the test sends on
# stdin; the winner holds it for a third of a slot while it owns the file "owner" (O_EXCL: two holders at
# once would crash here); one JSON line per trial.
LOCK_RACE = """
import json, os, sys, time
from pathlib import Path
from cbir_lightning.errors import CbirError
from cbir_lightning.search.lock import index_lock
folder, trials = Path(sys.argv[1]), int(sys.argv[2])
print("ready", flush=True)
start, slot = (float(v) for v in sys.stdin.readline().split())
for k in range(trials):
    time.sleep(max(0.0, start + k * slot - time.time()))
    try:
        with index_lock(folder):
            acquired = time.time()
            fd = os.open(folder / "owner", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            time.sleep(slot / 3)
            os.close(fd)
            os.unlink(folder / "owner")
            released = time.time()
        print(json.dumps({"trial": k, "held": [acquired, released]}), flush=True)
    except CbirError as err:
        print(json.dumps({"trial": k, "refused": str(err)}), flush=True)
"""

# python -c: open index argv[1] and search it in a loop until the file argv[2] exists; one JSON line.
READER = """
import json, sys
from pathlib import Path
import torch
from cbir_lightning.search.query import SearchIndex
folder, stop = Path(sys.argv[1]), Path(sys.argv[2])
model = SearchIndex.open(folder).load_model()
print("ready", flush=True)
queries, failures, versions = 0, [], set()
while not stop.exists():
    try:
        index = SearchIndex.open(folder)
        scores, rows = index.search_vectors(torch.from_numpy(index.embeddings[:2]), 3, model)
        assert rows.shape == (2, 3) and 0 <= rows.min() and rows.max() < len(index.items), rows
        versions.add(index.version.name)
        queries += 1
    except Exception as err:
        failures.append(f"{type(err).__name__}: {err}")
report = {"queries": queries, "failed": len(failures), "failures": failures[:3], "versions": len(versions)}
print(json.dumps(report))
"""


def index_command(ckpt: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cbir_lightning", "index", "--ckpt", str(ckpt), "--images", str(photos),
        "--out", str(out), "--accelerator", "cpu", *extra,
    ]  # fmt: skip


def load(index: Path) -> tuple[list[str], np.ndarray]:
    manifest, version = read_manifest(index)
    return [item["path"] for item in manifest["items"]], np.load(version / EMBEDDINGS)


def assert_searchable(out: Path, counts: set[int]) -> None:
    """The live version of ``out`` is complete: it opens, its vectors match its manifest, it answers."""
    index = SearchIndex.open(out)
    assert len(index.items) in counts
    scores, rows = index.search_vectors(torch.from_numpy(index.embeddings[:1]), 3, index.load_model())
    assert rows.shape == (1, 3) and rows.max() < len(index.items)


def test_sigkill_at_several_points_keeps_a_searchable_index_and_a_rerun_equals_a_clean_build(
    tiny_run, tmp_path
):
    photos = photo_folder(tmp_path / "photos", count=4)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    for i in range(12):  # new work for the killed runs
        Image.open(photos / "bodleian_000132.jpg").rotate(i * 9).save(photos / f"r{i:02d}.png")
    command = index_command(tiny_run["ckpt"], photos, out, "--batch-size", "1")

    def locked() -> bool:  # the run holds the lock and has written its pid
        return (out / ".lock").is_file() and (out / ".lock").read_text().strip() != ""

    def writing() -> bool:  # a new version folder exists (being written, or just published)
        return len([p for p in out.iterdir() if p.name.startswith("v-")]) > versions

    kill_points = {"locked": locked, "locked + 1.5 s": locked, "writing": writing}
    for name, reached in kill_points.items():
        versions = len([p for p in out.iterdir() if p.name.startswith("v-")])
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        while proc.poll() is None and not reached():
            time.sleep(0.0005)
        if name.endswith("1.5 s"):
            time.sleep(1.5)
        finished = proc.poll() is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not finished or proc.returncode == 0, (name, proc.stderr.read()[-2000:])
        assert_searchable(out, {4, 16})  # the old version, or the new one if the kill came after publishing
    result = build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    assert result["count"] == 16
    build_index(tiny_run["ckpt"], photos, tmp_path / "clean", trainer_options=CPU)
    paths, vectors = load(out)
    clean_paths, clean_vectors = load(tmp_path / "clean")
    assert paths == clean_paths and np.allclose(vectors, clean_vectors, atol=1e-6)
    # half-written versions of the killed runs are gone: the live version and the one before it remain
    left = [p for p in out.iterdir() if p.name.startswith("v-")]
    assert len(left) == 2 and current_version(out) in left and all((p / MANIFEST).is_file() for p in left)


def test_lock_race_between_two_real_processes(tmp_path):
    """30 trials of two processes taking the lock at the same instant: never two holders at once, the
    loser is refused naming the winner, and (overlapping as they are) one wins almost every trial."""
    out = tmp_path / "idx"
    out.mkdir()
    trials, slot = 30, 0.2
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOCK_RACE, str(out), str(trials)],
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
    start = time.time() + 0.5
    for proc in procs:
        proc.stdin.write(f"{start} {slot}\n")
        proc.stdin.flush()
    records = {}
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]  # a second holder would have crashed on "owner"
        records[proc.pid] = [json.loads(line) for line in stdout.splitlines()]
        assert [r["trial"] for r in records[proc.pid]] == list(range(trials))
    (a, ra), (b, rb) = records.items()
    holds = sorted(r["held"] for r in ra + rb if "held" in r)
    assert all(first[1] <= second[0] for first, second in zip(holds, holds[1:], strict=False))  # disjoint
    for pid, other in ((a, b), (b, a)):
        for r in records[pid]:
            if "refused" in r:
                assert re.fullmatch(
                    rf"another `cbir-lightning index` run \((pid {other} on host .+, started .+|whose pid is "
                    rf"not written yet)\) is writing {re.escape(str(out))}; wait for it to finish",
                    r["refused"],
                ), r["refused"]
    one_winner = sum(("held" in x) != ("held" in y) for x, y in zip(ra, rb, strict=True))
    assert one_winner >= 0.75 * trials, one_winner
    assert not (out / "owner").exists() and (out / ".lock").read_text() == ""


def test_two_real_index_runs_one_is_refused_with_one_line(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=4)
    out = tmp_path / "idx"
    command = index_command(tiny_run["ckpt"], photos, out, "--batch-size", "1")
    for attempt in range(3):  # started together they overlap; should they not, the runs were sequential
        for i in range(12):  # new work for both runs, so the first one holds the lock for a while
            image = Image.open(photos / "bodleian_000132.jpg").rotate(attempt * 100 + i * 7)
            image.save(photos / f"t{i:02d}.png")
        procs = [
            subprocess.Popen(
                command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        results = [(proc.communicate(timeout=180), proc.returncode) for proc in procs]
        codes = sorted(code for _, code in results)
        assert codes in ([0, 1], [0, 0]), results
        if codes == [0, 1]:
            stderr = next(err for (_, err), code in results if code == 1).strip()
            assert len(stderr.splitlines()) == 1 and REFUSAL.match(stderr), stderr
            break
    else:
        raise AssertionError("in 3 attempts the two index runs never overlapped")
    assert_searchable(out, {16})
    build_index(tiny_run["ckpt"], photos, tmp_path / "clean", trainer_options=CPU)
    paths, vectors = load(out)
    clean_paths, clean_vectors = load(tmp_path / "clean")
    assert paths == clean_paths and np.allclose(vectors, clean_vectors, atol=1e-6)


def test_reader_searching_in_a_loop_while_the_index_is_rebuilt_never_fails(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=20)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(out), str(stop)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()[-2000:]
        spare = photos / "sacre_coeur" / "spare.jpg"
        for i in range(10):  # each rebuild publishes a new version (vectors reused: quick)
            spare.unlink() if i % 2 else spare.write_bytes((photos / "bodleian_000132.jpg").read_bytes())
            build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    finally:
        stop.touch()
        stdout, stderr = reader.communicate(timeout=60)
    assert reader.returncode == 0, stderr[-2000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["failed"] == 0, report
    assert report["queries"] >= 20 and report["versions"] >= 3, report


def test_a_users_folder_as_out_is_refused_and_nothing_is_deleted(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=2)
    pictures = tmp_path / "Pictures"
    (pictures / "v-day-2019").mkdir(parents=True)
    (pictures / "v-day-2019" / "beach.jpg").write_bytes((photos / "bodleian_000132.jpg").read_bytes())
    (pictures / "v-20190101000000-deadbeef").mkdir()  # a version-like name, but not written by the toolkit
    (pictures / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(pictures).as_posix() for p in pictures.rglob("*"))
    proc = run_cli(
        ["index", "--ckpt", str(tiny_run["ckpt"]), "--images", str(photos), "--out", str(pictures)], tmp_path
    )
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert f"--out {pictures} is not empty and holds no index" in proc.stderr
    assert "pass a new or empty folder" in proc.stderr
    assert sorted(p.relative_to(pictures).as_posix() for p in pictures.rglob("*")) == before


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` with its bytes (None for a folder)."""
    return {
        p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")
    }


def test_a_folder_with_someone_elses_current_is_refused_and_left_as_it_was(tiny_run, tmp_path):
    """A LevelDB folder has a ``CURRENT`` too: only the toolkit's own index (its marker) is written to."""
    photos = photo_folder(tmp_path / "photos", count=2)
    leveldb, lone = tmp_path / "leveldb", tmp_path / "lone"
    leveldb.mkdir()
    (leveldb / "CURRENT").write_text("MANIFEST-000004\n")
    (leveldb / "MANIFEST-000004").write_bytes(b"\x56\xfa\x00\x01leveldb.BytewiseComparator")
    (leveldb / "000005.ldb").write_bytes(os.urandom(256))
    (leveldb / "LOCK").write_bytes(b"")
    lone.mkdir()
    (lone / "CURRENT").write_text("v-20240101000000-0123abcd\n")  # a version's name, but no such folder
    for folder in (leveldb, lone):
        before = _snapshot(folder)
        proc = run_cli(
            ["index", "--ckpt", str(tiny_run["ckpt"]), "--images", str(photos), "--out", str(folder)],
            tmp_path,
        )
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert proc.stderr.strip() == (
            f"cbir-lightning: error: --out {folder} is not empty and holds no index written by "
            "`cbir-lightning index` (it has 'CURRENT'); pass a new or empty folder, or an existing "
            "index folder"
        )
        assert _snapshot(folder) == before


def test_a_failed_first_index_leaves_no_folder_behind(tiny_run, tmp_path):
    empty = tmp_path / "no-photos"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "new" / "idx"
    proc = run_cli(
        ["index", "--ckpt", str(tiny_run["ckpt"]), "--images", str(empty), "--out", str(out)], tmp_path
    )
    assert proc.returncode == 1 and "nothing to index" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()
    # an existing index keeps its lock and its versions through a failed run
    photos = photo_folder(tmp_path / "photos", count=3)
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    before = _snapshot(out)
    proc = run_cli(
        ["index", "--ckpt", str(tiny_run["ckpt"]), "--images", str(empty), "--out", str(out)], tmp_path
    )
    assert proc.returncode == 1 and _snapshot(out) == before
    assert_searchable(out, {3})


# python -c: publish a version of the index argv[1], SIGKILLed while CURRENT's replacement is written
KILLED_PUBLISH = """
import os, signal, sys
from pathlib import Path
from cbir_lightning.search.manifest import current_version, publish
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
out = Path(sys.argv[1])
publish(out, current_version(out))
"""


def test_killed_runs_leave_nothing_in_tmp_and_their_files_in_the_index_are_cleared(tiny_run, tmp_path):
    """The file list a run hands to DDP workers (the user's paths) is a private file in the index folder,
    never in /tmp; the next run removes it, and the temporary file of a CURRENT write a kill cut short."""
    photos = photo_folder(tmp_path / "photos", count=2)
    for i in range(12):
        Image.open(photos / "bodleian_000132.jpg").rotate(i * 11).save(photos / f"r{i:02d}.png")
    out, tmp = tmp_path / "idx", tmp_path / "tmp"
    tmp.mkdir()
    env = {**ENV, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        index_command(tiny_run["ckpt"], photos, out, "--batch-size", "1"),
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def listed() -> list[Path]:
        return [*tmp.glob("cbir-index-files-*"), *(out.glob(".index-files-*") if out.is_dir() else [])]

    while proc.poll() is None and not listed():
        time.sleep(0.0005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -9, proc.stderr.read()[-2000:]
    assert not [p for p in tmp.iterdir() if p.name.startswith("cbir-index-files-")]
    (left,) = listed()
    assert left.parent == out and left.stat().st_mode & 0o777 == 0o600
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    killed = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, str(out)], env=ENV, capture_output=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in out.glob(".CURRENT.*.tmp")]
    rerun = subprocess.run(index_command(tiny_run["ckpt"], photos, out), env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".cbir-lightning-index",
        ".lock",
    ]
    assert_searchable(out, {14})
