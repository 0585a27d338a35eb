"""Pretrained vs fine-tuned on photos that appear nowhere in this repository or ../shared, as JSON lines.

Two public GitHub repositories, cloned by the user (this script reads them with ``git``, so bare or
normal clones both work, and opens no network connection):

* dogs: ``ksara28/dog-breed-classification``, ``images/Images/<wnid>-<breed>/*.jpg``, all 120 Stanford Dogs
  breeds at 224 x 224. The breeds that ``<shared>/stanford_dogs/Images`` does not hold (61-120 by wnid)
  are taken, ``--dogs-per-breed`` photos each (first by file name), whole photos (no boxes).
* paintings: ``jalpv1/wiki-art-selected-resized``, ``<Style>/<artist>_<title>.jpg``. The artists of
  ``--styles`` that ``<shared>/wikiart_pd/labels.tsv`` does not list, with at least ``--art-min``
  paintings, up to ``--art-max`` each (first by file name).

Every extracted file is checked by SHA-256 against every file under ``--shared`` (and against the
others extracted): a file found there is skipped and counted. Each set gets a ``labels.tsv``
(``path``, ``label`` / ``style``, ``artist``, ``split`` = ``test``), so the project's own
``cbir-lightning evaluate --config ... [--ckpt ...]`` scores every photo as a query against all the
others (every class unseen: the split column puts them all in evaluation).

    .venv/bin/python benchmarks/outside_photos.py extract --dogs-repo DOGS --art-repo ART \
        --shared ../shared/data --out /tmp/outside
    .venv/bin/python benchmarks/outside_photos.py evaluate --out /tmp/outside \
        [--dogs-ckpt CKPT] [--art-ckpt CKPT]

``evaluate`` prints one JSON line per (set, relevance, model): the pretrained model of the set's
``*_pretrained.yaml`` and, given a checkpoint, the fine-tuned one, with the command and its wall time.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # run as a script from anywhere: quality.py beside it
from quality import KEYS, timed_json  # noqa: E402

DOGS_FOLDER = "images/Images"
STYLES = ("Rococo", "Ukiyo_e", "Impressionism", "Pointillism")


def git_names(repo: Path, tree: str) -> list[str]:
    """Names in ``HEAD:<tree>`` of a git repository (bare or not), sorted."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "--name-only", f"HEAD:{tree}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(
            f"{repo}: no folder {tree} at HEAD ({out.stderr.strip()}); clone the repository named"
        )
    return sorted(out.stdout.split("\n")[:-1])


def git_blob(repo: Path, path: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "show", f"HEAD:{path}"], capture_output=True, check=True
    ).stdout


def digests(folder: Path) -> set[str]:
    """SHA-256 of every file under ``folder`` (symlinks followed)."""
    found = set()
    for root, _, files in os.walk(folder, followlinks=True):
        for name in files:
            found.add(hashlib.sha256((Path(root) / name).read_bytes()).hexdigest())
    return found


class Writer:
    """Writes extracted files that match no known digest; counts the ones skipped."""

    def __init__(self, known: set[str]) -> None:
        self.known, self.skipped = known, 0

    def write(self, data: bytes, target: Path) -> bool:
        digest = hashlib.sha256(data).hexdigest()
        if digest in self.known:
            self.skipped += 1
            return False
        self.known.add(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return True


def write_table(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        table = csv.writer(handle, delimiter="\t", lineterminator="\n")
        table.writerow(header)
        table.writerows(rows)


def extract_dogs(repo: Path, shared: Path, out: Path, per_breed: int, writer: Writer) -> dict:
    shared_breeds = {p.name for p in (shared / "stanford_dogs" / "Images").iterdir()}
    breeds = [b for b in git_names(repo, DOGS_FOLDER) if b not in shared_breeds]
    rows = []
    for breed in breeds:
        files = [f for f in git_names(repo, f"{DOGS_FOLDER}/{breed}") if f.lower().endswith(".jpg")]
        for name in files[:per_breed]:
            if writer.write(git_blob(repo, f"{DOGS_FOLDER}/{breed}/{name}"), out / breed / name):
                rows.append([f"{breed}/{name}", breed, "test"])
    write_table(out / "labels.tsv", ["path", "label", "split"], rows)
    return {
        "set": "dogs",
        "classes": len({r[1] for r in rows}),
        "photos": len(rows),
        "shared_breeds_skipped": len(shared_breeds),
    }


def extract_art(
    repo: Path, shared: Path, out: Path, styles: list[str], least: int, most: int, writer: Writer
) -> dict:
    with (shared / "wikiart_pd" / "labels.tsv").open() as handle:
        shared_artists = {row["artist"] for row in csv.DictReader(handle, delimiter="\t")}
    paintings = defaultdict(list)  # artist -> [(file name, style)]
    for style in styles:
        for name in git_names(repo, style):
            artist = name.split("_", 1)[0]
            if name.lower().endswith(".jpg") and artist not in shared_artists:
                paintings[artist].append((name, style))
    rows = []
    for artist in sorted(paintings):
        if len(paintings[artist]) < least:
            continue
        for name, style in sorted(paintings[artist])[:most]:
            if writer.write(git_blob(repo, f"{style}/{name}"), out / artist / name):
                rows.append([f"{artist}/{name}", style, artist, "test"])
    write_table(out / "labels.tsv", ["path", "style", "artist", "split"], rows)
    return {
        "set": "art",
        "classes": len({r[2] for r in rows}),
        "photos": len(rows),
        "styles": sorted({r[1] for r in rows}),
    }


def extract(args: argparse.Namespace) -> None:
    shared, out = Path(args.shared), Path(args.out)
    writer = Writer(digests(shared))
    known = len(writer.known)
    for line in (
        extract_dogs(Path(args.dogs_repo), shared, out / "dogs", args.dogs_per_breed, writer),
        extract_art(
            Path(args.art_repo), shared, out / "art", args.styles, args.art_min, args.art_max, writer
        ),
    ):
        print(json.dumps({"benchmark": "outside_photos", **line, "shared_files_hashed": known}))
    print(json.dumps({"benchmark": "outside_photos", "skipped_identical_files": writer.skipped}))


# set -> (config, overrides); every photo of the table is an evaluation photo (split column = test)
SETS = {
    "dogs": (
        "stanford_dogs",
        [
            "--data.init_args.layout",
            "auto",
            "--data.init_args.crop",
            "false",
            "--data.init_args.labels_file",
            "labels.tsv",
        ],
    ),
    "art": (
        "wikiart",
        ["--data.init_args.labels_file", "labels.tsv", "--data.init_args.group_column", "artist"],
    ),
}
RELEVANCE = {"dogs": {"breed": "label"}, "art": {"artist": "artist", "style": "style"}}


def evaluate_one(name: str, root: Path, label: str, ckpt: str | None, work: Path) -> dict:
    config, overrides = SETS[name]
    kind = "finetune" if ckpt else "pretrained"
    args = [
        "evaluate",
        "--config",
        str(REPO / "configs" / f"{config}_{kind}.yaml"),
        *(["--ckpt", ckpt] if ckpt else []),
        "--data.root",
        str(root),
        *overrides,
        "--data.init_args.label_column",
        label,
        "--data.init_args.split_column",
        "split",
        "--trainer.default_root_dir",
        str(work / f"{name}_{kind}"),
    ]
    result, seconds = timed_json(args, REPO, error_lines=3)
    return {
        "set": name,
        "model": kind,
        "command": "cbir-lightning " + " ".join(args),
        "seconds": round(seconds, 1),
        **{k: result[k] for k in KEYS if k in result},
    }


def evaluate(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    # the evaluations run from the repository root: paths given relative to where this was started
    ckpts = {
        name: str(Path(c).resolve()) if c else None
        for name, c in (("dogs", args.dogs_ckpt), ("art", args.art_ckpt))
    }
    for name in args.sets:
        for relevance, column in RELEVANCE[name].items():
            models = (None, ckpts[name]) if ckpts[name] else (None,)
            for ckpt in models[1:] if args.finetuned_only else models:
                row = evaluate_one(name, out / name, column, ckpt, out / "eval_runs")
                print(json.dumps({"benchmark": "outside_photos", "relevance": relevance, **row}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("extract", help="copy the outside photos out of the two cloned repositories")
    ex.add_argument("--dogs-repo", required=True, help="clone of ksara28/dog-breed-classification")
    ex.add_argument("--art-repo", required=True, help="clone of jalpv1/wiki-art-selected-resized")
    ex.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), help="the data to stay out of")
    ex.add_argument("--out", required=True, help="where the photos go (outside the repository)")
    ex.add_argument("--dogs-per-breed", type=int, default=20)
    ex.add_argument("--styles", nargs="+", default=list(STYLES))
    ex.add_argument("--art-min", type=int, default=15)
    ex.add_argument("--art-max", type=int, default=30)
    ev = commands.add_parser("evaluate", help="pretrained vs fine-tuned on the extracted photos")
    ev.add_argument("--out", required=True, help="the folder extract wrote")
    ev.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ev.add_argument("--dogs-ckpt", help="fine-tuned checkpoint of configs/stanford_dogs_finetune.yaml")
    ev.add_argument("--art-ckpt", help="fine-tuned checkpoint of configs/wikiart_finetune.yaml")
    ev.add_argument("--finetuned-only", action="store_true", help="skip the pretrained rows")
    args = parser.parse_args()
    extract(args) if args.command == "extract" else evaluate(args)


if __name__ == "__main__":
    main()
