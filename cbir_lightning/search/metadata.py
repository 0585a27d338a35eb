"""``index --metadata FILE``: a TSV or CSV table with a ``path`` column (relative to ``--images``) and any
other columns, stored with each vector; ``search --where`` filters on them, ``search --text`` ranks by
them."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from cbir_lightning.errors import CbirError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # a column usable in a --where expression
RESERVED = {"id", "path", "vector", "size", "mtime_ns", "sha256", "text", "sparse"}  # the store's own fields
KINDS = ("int", "float", "str")


@dataclass(frozen=True)
class Metadata:
    """The table: ``columns`` ``{name: "int" | "float" | "str"}`` (the path column excluded, file order)
    and ``rows`` ``{path: {name: value or None}}``."""

    columns: dict[str, str]
    rows: dict[str, dict]

    def row(self, path: str) -> dict:
        """The values of ``path`` (None for every column if the table has no row for it)."""
        return self.rows.get(path) or dict.fromkeys(self.columns)


def column_kind(values: list[str]) -> str:
    """``int`` if every non-empty value is an integer, else ``float`` if every one is a number, else ``str``
    (an all-empty column is ``str``)."""
    filled = [v for v in values if v != ""]
    if not filled:
        return "str"
    for kind, parse in (("int", int), ("float", float)):
        try:
            for v in filled:
                parse(v)
        except ValueError:
            continue
        return kind
    return "str"


def _value(text: str, kind: str):
    if text == "":
        return None
    return int(text) if kind == "int" else float(text) if kind == "float" else text


def read_metadata(path: str | Path) -> Metadata:
    """The table at ``path`` (``.tsv``: tab-separated, otherwise comma-separated; UTF-8, a header line);
    CbirError (one line) without a ``path`` column, with a column name unusable in ``--where`` or one of
    the store's own fields, with a repeated path, or a row of another length."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise CbirError(f"--metadata {path}: cannot read it ({err}); pass a UTF-8 .tsv or .csv file") from err
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    lines = list(csv.reader(text.splitlines(), delimiter=delimiter))
    lines = [line for line in lines if line]
    if not lines or "path" not in lines[0]:
        found = ", ".join(lines[0][:6]) if lines else "nothing"
        raise CbirError(
            f"--metadata {path} has no 'path' column (its header: {found}); put the image paths, relative "
            "to --images, in a column named path"
        )
    header = [name.strip() for name in lines[0]]
    for name in header:
        if name != "path" and (not NAME.fullmatch(name) or name in RESERVED):
            why = "is one of the index's own fields" if name in RESERVED else "is not a name"
            raise CbirError(
                f"--metadata {path}: column {name!r} {why}; rename it (letters, digits, _; not "
                f"{', '.join(sorted(RESERVED - {'path'}))})"
            )
    if len(set(header)) != len(header):
        raise CbirError(f"--metadata {path}: a column name is repeated in the header; name each column once")
    body = lines[1:]
    for number, line in enumerate(body, 2):
        if len(line) != len(header):
            raise CbirError(
                f"--metadata {path} line {number} has {len(line)} fields, the header {len(header)}; "
                f"quote values holding {'tabs' if delimiter == chr(9) else 'commas'}"
            )
    at = header.index("path")
    names = [n for n in header if n != "path"]
    kinds = {n: column_kind([line[header.index(n)] for line in body]) for n in names}
    rows: dict[str, dict] = {}
    for number, line in enumerate(body, 2):
        key = line[at].strip().removeprefix("./")
        if key in rows:
            raise CbirError(f"--metadata {path} line {number}: path {key!r} is listed twice; list it once")
        rows[key] = {n: _value(line[header.index(n)], kinds[n]) for n in names}
    return Metadata(kinds, rows)
