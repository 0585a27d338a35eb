"""``cbir-lightning index``: vectors, incremental updates, atomic publication, locks and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.search import other_checkpoint, photo_folder, reference_vectors
from PIL import Image

from benchmarks.serve_load import png_bomb
from cbir_lightning.errors import CbirError
from cbir_lightning.search import index as index_module
from cbir_lightning.search.index import build_index
from cbir_lightning.search.manifest import (
    EMBEDDINGS,
    FORMAT_VERSION,
    MANIFEST,
    current_version,
    read_manifest,
    toolkit_versions,
)

CPU = {"accelerator": "cpu", "enable_progress_bar": False}
HOLD_LOCK = (  # python -c: take the writer lock of the index folder argv[1], say so, hold it until killed
    "import sys, time; from pathlib import Path; from cbir_lightning.search.lock import index_lock\n"
    "with index_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)"
)


def load(index: Path) -> tuple[dict, np.ndarray]:
    manifest, version = read_manifest(index)
    return manifest, np.load(version / EMBEDDINGS)


def test_vectors_match_direct_embedding_and_bad_files_are_listed(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos")
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "notes.txt").write_text("ignored: not an image suffix")
    with open(photos / "oxford_002904.jpg", "rb") as f:  # a truncated copy: header fine, pixels missing
        (photos / "truncated.jpg").write_bytes(f.read()[:2000])
    result = build_index(tiny_run["ckpt"], photos, tmp_path / "idx", batch_size=4, trainer_options=CPU)
    manifest, vectors = load(tmp_path / "idx")
    paths = [item["path"] for item in manifest["items"]]
    assert {s["path"] for s in result["skipped"]} == {"broken.jpg", "truncated.jpg"}
    assert "notes.txt" not in paths and len(paths) == 20 == result["count"] == result["embedded"]
    assert paths == sorted(paths) and "sacre_coeur/02928139_3448003521.jpg" in paths
    expected = reference_vectors(tiny_run["ckpt"], [photos / p for p in paths])
    assert np.allclose(vectors, expected.numpy(), atol=1e-5)
    assert manifest["format_version"] == FORMAT_VERSION and manifest["dimension"] == expected.shape[1]
    assert manifest["scoring"] == "model" and manifest["whitening"] is None  # Koch: learned L1 head
    assert manifest["model"]["checkpoint"] == str(Path(tiny_run["ckpt"]).resolve())


def test_incremental_update_equals_a_fresh_build(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=8)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    before, old_vectors = load(out)
    first = current_version(out)  # kept as the previous version after the update
    names = [item["path"] for item in before["items"]]
    (photos / names[0]).unlink()  # deleted
    Image.open(photos / names[1]).rotate(90).save(photos / names[1])  # changed
    os.utime(photos / names[1], ns=(1, 1))
    extra = photo_folder(tmp_path / "more", count=12)
    new = sorted(extra.glob("sacre_coeur/*.jpg"))[0]
    (photos / "new").mkdir()
    (photos / "new" / "added.jpg").write_bytes(new.read_bytes())  # added
    result = build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    assert (result["reused"], result["embedded"], result["removed"]) == (6, 2, 1)
    after, vectors = load(out)
    fresh = tmp_path / "fresh"
    build_index(tiny_run["ckpt"], photos, fresh, trainer_options=CPU)
    reference, reference_vectors_ = load(fresh)
    assert [i["path"] for i in after["items"]] == [i["path"] for i in reference["items"]]
    assert np.allclose(vectors, reference_vectors_, atol=1e-6)
    unchanged = names[2]
    row_old, row_new = names.index(unchanged), [i["path"] for i in after["items"]].index(unchanged)
    assert np.array_equal(old_vectors[row_old], vectors[row_new])  # reused, not recomputed
    assert [p.name for p in toolkit_versions(out)] == sorted([first.name, current_version(out).name])


def test_another_model_reembeds_everything(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=4)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    other = other_checkpoint(tiny_run["ckpt"], tmp_path / "other.ckpt")
    result = build_index(other, photos, out, trainer_options=CPU)
    assert result["reused"] == 0 and result["embedded"] == 4
    assert read_manifest(out)[0]["model"]["checkpoint"] == str(other.resolve())


def test_failed_write_keeps_the_previous_index(tiny_run, tmp_path, monkeypatch):
    photos = photo_folder(tmp_path / "photos", count=4)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    live = current_version(out)
    before = (live / MANIFEST).read_text()
    Image.open(photos / "bodleian_000132.jpg").rotate(90).save(photos / "rotated.png")

    def crash(vectors, path):
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "write_faiss", crash)
    with pytest.raises(CbirError, match=r"cannot write the index in .* \(disk full\); free space"):
        build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    assert current_version(out) == live and (live / MANIFEST).read_text() == before
    assert [p for p in out.iterdir() if p.name.startswith("v-")] == [live]  # the partial one is removed
    monkeypatch.undo()
    assert build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)["count"] == 5  # lock released
    versions = {p.name for p in out.iterdir() if p.name.startswith("v-")}
    assert versions == {live.name, current_version(out).name}


def test_killed_run_leaves_the_previous_index_intact(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=4)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    live = current_version(out)
    before = (live / MANIFEST).read_text()
    for i in range(20):  # enough new work that the run is still embedding when killed
        Image.open(photos / "bodleian_000132.jpg").rotate(i * 9).save(photos / f"r{i:02d}.png")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cbir_lightning",
            "index",
            "--ckpt",
            str(tiny_run["ckpt"]),
            "--images",
            str(photos),
            "--out",
            str(out),
            "--batch-size",
            "1",
            "--accelerator",
            "cpu",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = ""
    while "Embedding" not in seen and proc.poll() is None:  # killed while embedding (its progress bar)
        seen += proc.stdout.read(1)
    assert proc.poll() is None and (out / ".lock").exists(), seen[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert current_version(out) == live and (live / MANIFEST).read_text() == before
    manifest, vectors = load(out)
    assert len(manifest["items"]) == len(vectors) == 4
    # the dead run's lock is stale: the next run takes it over and indexes everything
    assert build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)["count"] == 24


def test_concurrent_run_is_refused_with_one_line(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=2)
    out = tmp_path / "idx"
    out.mkdir()
    holder = subprocess.Popen(  # another process holds the index's lock
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = f"another `cbir-lightning index` run \\(pid {holder.pid} on host .*, started .*\\) is"
        with pytest.raises(CbirError, match=message):
            build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
        assert current_version(out) is None
    finally:
        holder.kill()
        holder.wait()
    # the dead holder's lock file (its pid still written in it) does not block the next run
    assert f"pid {holder.pid}" in (out / ".lock").read_text()
    assert build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)["count"] == 2


def test_bad_folders_and_huge_images(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CbirError, match="no jpg/png/webp images under"):
        build_index(tiny_run["ckpt"], tmp_path / "empty", tmp_path / "idx", trainer_options=CPU)
    with pytest.raises(CbirError, match="not found"):
        build_index(tiny_run["ckpt"], tmp_path / "missing", tmp_path / "idx", trainer_options=CPU)
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    Image.new("1", (10_000, 9_000)).save(bomb / "huge.png")  # 90 Mpx > Pillow's 89.5 Mpx limit
    with pytest.raises(CbirError, match="no readable image.*huge.png: image too large"):
        build_index(tiny_run["ckpt"], bomb, tmp_path / "idx", trainer_options=CPU)
    photo_folder(bomb, count=1)
    result = build_index(tiny_run["ckpt"], bomb, tmp_path / "idx", trainer_options=CPU)
    assert result["count"] == 1 and result["skipped"][0]["path"] == "huge.png"


# python -c: ``cbir-lightning ARGV``, then this process's peak RSS in MB as stderr's last line
PEAK_RSS = """
import resource, sys
from cbir_lightning.cli import main
try:
    main(sys.argv[1:])
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)
"""


def _index_with_peak(ckpt: Path, photos: Path, out: Path) -> tuple[dict, int]:
    """``cbir-lightning index`` in a subprocess: its JSON result and its peak RSS in MB."""
    args = ["index", "--ckpt", str(ckpt), "--images", str(photos), "--out", str(out), "--accelerator", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), int(proc.stderr.strip().splitlines()[-1])


def test_a_png_bomb_under_pillows_limit_is_skipped_from_its_header(tiny_run, tmp_path):
    """A 258 KB PNG declaring 9400x9400 pixels (under Pillow's 89 MP limit; decoding it took ``index`` to
    4 GB) is skipped by the 25 MP default cap without a pixel decoded: the run's peak memory is that of the
    same run without it."""
    photos = photo_folder(tmp_path / "photos", count=3)
    _, plain = _index_with_peak(tiny_run["ckpt"], photos, tmp_path / "plain")
    (photos / "bomb.png").write_bytes(png_bomb(9400, 9400))
    assert (photos / "bomb.png").stat().st_size < 300_000
    result, bombed = _index_with_peak(tiny_run["ckpt"], photos, tmp_path / "bombed")
    assert result["count"] == 3
    assert {"path": "bomb.png", "reason": "image too large (9400x9400 pixels, limit 25000000)"} in result[
        "skipped"
    ]
    assert bombed - plain < 200, (plain, bombed)


def test_wrong_format_version_is_refused(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=1)
    build_index(tiny_run["ckpt"], photos, tmp_path / "idx", trainer_options=CPU)
    version = current_version(tmp_path / "idx")
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["format_version"] = 999
    (version / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CbirError, match="format version 999.*rebuild it"):
        read_manifest(tmp_path / "idx")
    with pytest.raises(CbirError, match="holds no index"):
        read_manifest(tmp_path / "photos")


def test_whitening_beside_the_checkpoint_is_applied_and_recorded(tiny_run, tmp_path):
    from cbir_lightning.search.query import SearchIndex

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(Path(tiny_run["ckpt"]).read_bytes())
    photos = photo_folder(tmp_path / "photos", count=6)
    g = torch.Generator().manual_seed(0)
    mean, projection = torch.randn(32, generator=g), torch.randn(16, 32, generator=g)
    torch.save({"kind": "pca", "mean": mean, "projection": projection}, tmp_path / "model.whitening.pt")
    build_index(ckpt, photos, tmp_path / "idx", trainer_options=CPU)
    manifest, vectors = load(tmp_path / "idx")
    assert manifest["whitening"]["kind"] == "pca" and manifest["scoring"] == "dot"
    assert manifest["dimension"] == 16
    raw = reference_vectors(ckpt, [photos / i["path"] for i in manifest["items"]]).double()
    expected = (raw - mean.double()) @ projection.double().T
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert np.allclose(vectors, expected.numpy(), atol=1e-5)
    index = SearchIndex.open(tmp_path / "idx")
    model = index.load_model()
    scores, rows = index.search_vectors(torch.from_numpy(vectors[:2]), 3, model, rerank="aqe")
    assert rows.shape == (2, 3) and rows[0, 0] == 0 and rows[1, 0] == 1
    # another whitening file: the index no longer matches its model
    torch.save({"kind": "lw", "mean": mean, "projection": projection[:8]}, tmp_path / "model.whitening.pt")
    with pytest.raises(CbirError, match="whitening beside .* differs"):
        index.load_model()


def test_ddp_index_equals_a_single_process_index(tiny_run, tmp_path):
    """Two CPU processes (gloo) each embed a shard; rank 0 gathers, writes the same index, prints one line."""
    photos = photo_folder(tmp_path / "photos", count=7)  # odd: DistributedSampler repeats a batch
    build_index(tiny_run["ckpt"], photos, tmp_path / "single", batch_size=2, trainer_options=CPU)
    args = ["--ckpt", str(tiny_run["ckpt"]), "--images", str(photos), "--out", str(tmp_path / "ddp")]
    args += ["--batch-size", "2", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "cbir_lightning", "index", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["count"] == 7, proc.stdout
    single, single_vectors = load(tmp_path / "single")
    ddp, ddp_vectors = load(tmp_path / "ddp")
    assert [i["path"] for i in ddp["items"]] == [i["path"] for i in single["items"]]
    assert np.allclose(ddp_vectors, single_vectors, atol=1e-5)
    assert (tmp_path / "ddp" / ".lock").read_text() == ""  # released: no holder named


def test_out_that_is_not_an_index_or_lies_in_the_images_is_refused_and_nothing_is_deleted(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=2)
    names = sorted(p.name for p in photos.iterdir())
    album = tmp_path / "Pictures"
    (album / "v-day-2019").mkdir(parents=True)
    (album / "v-day-2019" / "beach.txt").write_text("holiday")
    with pytest.raises(
        CbirError, match=f"--out {album} is not empty and holds no index.*pass a new or empty"
    ):
        build_index(tiny_run["ckpt"], photos, album, trainer_options=CPU)
    assert (album / "v-day-2019" / "beach.txt").read_text() == "holiday"
    for out in (photos, photos / "sacre_coeur", photos / "new-index"):  # the image folder or inside it
        with pytest.raises(CbirError, match=f"index folder {out} is inside the image folder {photos}"):
            build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    assert sorted(p.name for p in photos.iterdir()) == names
    # an index folder keeps a user's folders in it, even one named like a version (no marker inside)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    (out / "v-day-2019").mkdir()
    (out / "v-20190101000000-deadbeef").mkdir()
    (out / "v-20190101000000-deadbeef" / "mine.txt").write_text("mine")
    for _ in range(3):
        build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    assert (out / "v-day-2019").is_dir() and (out / "v-20190101000000-deadbeef" / "mine.txt").is_file()
    assert len(toolkit_versions(out)) == 2  # the live version and the one before it


def test_corrupt_current_is_rebuilt(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=2)
    out = tmp_path / "idx"
    build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)
    (out / "CURRENT").write_bytes(b"\x00\xffgarbage/../text\n")
    with pytest.raises(CbirError, match="CURRENT is corrupt; rebuild it with `cbir-lightning index`"):
        read_manifest(out)
    assert build_index(tiny_run["ckpt"], photos, out, trainer_options=CPU)["count"] == 2
    manifest, vectors = load(out)
    assert len(manifest["items"]) == len(vectors) == 2


def test_symlinks_out_of_the_collection_are_skipped_and_listed(tiny_run, tmp_path):
    photos = photo_folder(tmp_path / "photos", count=3)
    names = sorted(p.name for p in photos.iterdir())
    outside = photo_folder(tmp_path / "outside", count=2)
    (photos / "escape.jpg").symlink_to(outside / "bodleian_000132.jpg")
    (photos / "elsewhere").symlink_to(outside, target_is_directory=True)
    (photos / "alias.jpg").symlink_to(photos / names[1])  # inside the collection: indexed
    (photos / "gone.jpg").symlink_to(photos / "deleted.jpg")  # dangling: listed, not dropped unseen
    (photos / "loop.jpg").symlink_to(photos / "loop.jpg")
    result = build_index(tiny_run["ckpt"], photos, tmp_path / "idx", trainer_options=CPU)
    manifest, _ = load(tmp_path / "idx")
    assert [i["path"] for i in manifest["items"]] == ["alias.jpg", *names]
    assert {s["path"]: s["reason"].split(" outside ")[0] for s in result["skipped"]} == {
        "elsewhere": "symlink to a folder",
        "escape.jpg": "symlink to a file",
        "gone.jpg": "symlink to a missing file; not indexed",
        "loop.jpg": "symlink loop; not followed",
    }


def test_files_that_vanish_or_change_while_indexed_are_skipped_and_listed(tiny_run, tmp_path, monkeypatch):
    photos = photo_folder(tmp_path / "photos", count=5)
    vanish, change = photos / "bodleian_000132.jpg", photos / "oxford_002904.jpg"
    embed_files = index_module.embed_files

    def then_change_files(*args, **kwargs):  # once every file is embedded: delete one, rewrite another
        embedded = embed_files(*args, **kwargs)
        vanish.unlink()
        Image.open(change).rotate(90).save(change)
        return embedded

    with monkeypatch.context() as patched:
        patched.setattr(index_module, "embed_files", then_change_files)
        result = build_index(tiny_run["ckpt"], photos, tmp_path / "idx", trainer_options=CPU)
    assert result["count"] == 3 and {s["path"]: s["reason"] for s in result["skipped"]} == {
        vanish.name: "vanished while being indexed",
        change.name: "changed while being indexed; run `cbir-lightning index` again to add it",
    }
    assert result["embedded"] == 3 and vanish.name not in [
        i["path"] for i in load(tmp_path / "idx")[0]["items"]
    ]
    again = build_index(tiny_run["ckpt"], photos, tmp_path / "idx", trainer_options=CPU)
    assert (again["count"], again["reused"], again["embedded"], again["skipped"]) == (4, 3, 1, [])


def test_ddp_workers_embed_rank_0s_file_list(tiny_run, tmp_path):
    """A file added after rank 0 listed the folder (it says so, before Lightning Fabric starts the worker
    processes) is not seen by the workers either: the index holds rank 0's files with their own vectors."""
    photos = photo_folder(tmp_path / "photos", count=7)
    build_index(tiny_run["ckpt"], photos, tmp_path / "single", batch_size=2, trainer_options=CPU)
    args = ["--ckpt", str(tiny_run["ckpt"]), "--images", str(photos), "--out", str(tmp_path / "ddp")]
    args += ["--batch-size", "2", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cbir_lightning", "index", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen = []
    for line in proc.stdout:  # rank 0 has listed the folder and is about to launch the workers
        seen.append(line)
        if line.startswith("embedding 7 images"):
            break
    Image.open(photos / "bodleian_000132.jpg").rotate(45).save(photos / "000_added.png")  # sorts first
    seen += proc.stdout.readlines()
    assert proc.wait(timeout=300) == 0, "".join(seen)[-3000:]
    single, single_vectors = load(tmp_path / "single")
    ddp, ddp_vectors = load(tmp_path / "ddp")
    assert [i["path"] for i in ddp["items"]] == [i["path"] for i in single["items"]]
    assert np.allclose(ddp_vectors, single_vectors, atol=1e-5)


def test_index_with_a_configs_pretrained_model(tmp_path, monkeypatch, capsys):
    """``index --config``: the config's model with its own (ImageNet) weights, written as a checkpoint under
    the config's run folder; the index holds the vectors of that model built directly, and ``recommend``
    loads it from the index alone."""
    from helpers.paths import REPO

    from cbir_lightning.cli import main
    from cbir_lightning.models import GeMSiameseModule
    from data_modules import PhotoCollectionDataModule

    photos = photo_folder(tmp_path / "photos", count=4)
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "wikiart_pretrained.yaml")
    main(["index", "--config", config, "--images", str(photos), "--out", "idx", "--batch-size", "4"])
    ckpt = tmp_path / "runs" / "wikiart_pretrained" / "checkpoints" / "config.ckpt"
    manifest, vectors = load(tmp_path / "idx")
    assert Path(manifest["model"]["checkpoint"]).resolve() == ckpt.resolve()
    module = GeMSiameseModule(backbone="mobilenet_v2", weights="imagenet", pooling="gem", p=3.0).eval()
    transform = PhotoCollectionDataModule(root="unused", image_size=320).eval_transform
    files = [photos / item["path"] for item in manifest["items"]]
    with torch.no_grad():
        expected = torch.cat([module.embed(transform(Image.open(f).convert("RGB"))[None]) for f in files])
    assert np.allclose(vectors, expected.numpy(), atol=1e-4)
    capsys.readouterr()
    main(["recommend", "--index", "idx", "--image", str(files[0]), "--top-k", "2"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(result["results"]) == 2 and str(files[0]) not in [r["path"] for r in result["results"]]
    with pytest.raises(SystemExit):
        main(["index", "--config", config, "--ckpt", str(ckpt), "--images", str(photos), "--out", "idx"])
    assert "pass one of --ckpt, --model and --config" in capsys.readouterr().err
