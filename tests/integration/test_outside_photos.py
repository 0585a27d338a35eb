"""benchmarks/outside_photos.py extract: only breeds, artists and files that the shared data does not hold."""

from __future__ import annotations

import csv
import subprocess

from helpers.benchmarks import run_benchmark_lines


def git_repo(root, files: dict[str, bytes]):
    """A git repository at ``root`` whose HEAD holds ``files`` (path -> bytes)."""
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "photos"], check=True)
    return root


def rows(table):
    with table.open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_extract_skips_shared_breeds_artists_and_identical_files(tmp_path):
    shared = tmp_path / "shared"
    (shared / "stanford_dogs" / "Images" / "n1-pug").mkdir(parents=True)
    (shared / "stanford_dogs" / "Images" / "n1-pug" / "a.jpg").write_bytes(b"pug")
    (shared / "wikiart_pd").mkdir()
    (shared / "wikiart_pd" / "labels.tsv").write_text("path\tstyle\tartist\nx/x_1.jpg\tRococo\tboucher\n")
    (shared / "wikiart_pd" / "copy.jpg").write_bytes(b"same as a shared painting")
    dogs = git_repo(tmp_path / "dogs", {
        "images/Images/n1-pug/a.jpg": b"pug",  # a shared breed
        **{f"images/Images/n2-akita/{i}.jpg": f"akita {i}".encode() for i in range(4)},
        "images/Images/n3-collie/0.jpg": b"collie",
    })  # fmt: skip
    art = git_repo(tmp_path / "art", {
        "Rococo/boucher_a.jpg": b"boucher",  # a shared artist
        "Rococo/watteau_a.jpg": b"watteau a",
        "Rococo/watteau_b.jpg": b"same as a shared painting",  # a file the shared data holds
        "Rococo/watteau_c.jpg": b"watteau c",
        "Ukiyo_e/hokusai_a.jpg": b"hokusai a",  # too few paintings
        "Cubism/picasso_a.jpg": b"picasso a", "Cubism/picasso_b.jpg": b"picasso b",  # style not asked
    })  # fmt: skip
    out = tmp_path / "out"
    lines = run_benchmark_lines(
        "outside_photos.py", "extract", "--dogs-repo", dogs, "--art-repo", art, "--shared", shared,
        "--out", out, "--dogs-per-breed", "3", "--art-min", "2", "--art-max", "5",
        "--styles", "Rococo", "Ukiyo_e",
    )  # fmt: skip
    assert [row["path"] for row in rows(out / "dogs" / "labels.tsv")] == [
        "n2-akita/0.jpg", "n2-akita/1.jpg", "n2-akita/2.jpg", "n3-collie/0.jpg"
    ]  # fmt: skip
    assert {row["split"] for row in rows(out / "dogs" / "labels.tsv")} == {"test"}
    assert (out / "dogs" / "n2-akita" / "1.jpg").read_bytes() == b"akita 1"
    art_rows = rows(out / "art" / "labels.tsv")
    assert [(r["path"], r["style"], r["artist"]) for r in art_rows] == [
        ("watteau/watteau_a.jpg", "Rococo", "watteau"), ("watteau/watteau_c.jpg", "Rococo", "watteau")
    ]  # fmt: skip
    assert not (out / "dogs" / "n1-pug").exists() and not (out / "art" / "boucher").exists()
    assert lines[-1]["skipped_identical_files"] == 1
    assert lines[0]["classes"] == 2 and lines[1]["classes"] == 1
