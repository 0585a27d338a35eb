"""The public-domain paintings' metadata for ``index --metadata``: ``labels.tsv`` (path, style, artist) plus
``title`` and ``year`` read from the file names (``<artist>/<artist>_<title-words>[-<year>][-<n>].jpg``:
WikiArt's naming; 427 of the 944 names carry a year).

    .venv/bin/python benchmarks/paintings_metadata.py data/wikiart_pd paintings.tsv
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

YEAR = re.compile(r"-(1[0-9]{3})(?:-\d{1,2})?$")  # a year at the end, maybe a short duplicate counter after
COUNTER = re.compile(r"-\d+$")


def title_and_year(path: str) -> tuple[str, int | None]:
    """``canaletto/canaletto_the-grand-canal-1738-1.jpg`` -> ``("the grand canal", 1738)``."""
    stem = Path(path).stem.split("_", 1)[-1]
    found = YEAR.search(stem)
    if found:
        return stem[: found.start()].replace("-", " ").strip(), int(found.group(1))
    return COUNTER.sub("", stem).replace("-", " ").strip(), None


def painting_rows(root: Path) -> list[dict]:
    """One row per painting of ``root/labels.tsv``: path, style, artist, title, year (None if unnamed)."""
    with open(root / "labels.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [{**row, **dict(zip(("title", "year"), title_and_year(row["path"]), strict=True))} for row in rows]


def write_tsv(rows: list[dict], out: Path) -> Path:
    """The rows as a TSV that ``index --metadata`` reads back (csv quoting: a value may hold a tab)."""
    columns = ["path", "style", "artist", "title", "year"]
    with open(out, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if r[c] is None else r[c] for c in columns] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the paintings folder (labels.tsv inside)")
    parser.add_argument("out", type=Path, help="the TSV to write")
    args = parser.parse_args()
    rows = painting_rows(args.root)
    write_tsv(rows, args.out)
    print(f"{args.out}: {len(rows)} paintings, {sum(r['year'] is not None for r in rows)} with a year")


if __name__ == "__main__":
    main()
