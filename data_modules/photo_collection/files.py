"""A user's labelled photo collection on disk, and its class-disjoint split.

Two layouts:

* class folders: ``<root>/<label>/<image>`` (jpg, jpeg, png, webp, bmp; one level deep);
* a table, ``labels_file`` (``.csv`` or ``.tsv``, with a header row): a path column (relative to ``root``
  or absolute), a label column and, optionally, a group column and a split column;
* the Stanford Dogs release (``Images/``, ``Annotation/``, ``lists/{train,test}_list.mat``): every listed
  photo, labelled by breed folder, with its VOC annotation for cropping to the dog.

The split is class-disjoint: whole units (labels, or groups when a group column is named: e.g. hold out
artists while relevance is by style) go either to training or to evaluation, so retrieval is measured on
classes the model never saw. A split column (``train`` / ``val`` / ``test``) overrides it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir_lightning.errors import CbirError
from data_modules.datasets.image_folders import IMAGE_SUFFIXES, class_folders
from data_modules.stanford_dogs.files import read_list

TRAIN_SPLITS = ("train",)
EVAL_SPLITS = ("val", "test", "eval")


@dataclass(frozen=True)
class Collection:
    """Parallel lists: ``paths[i]`` has label ``labels[i]``, split unit ``groups[i]`` and, if the table
    gives one, split ``splits[i]`` (else None)."""

    paths: list[Path]
    labels: list[str]
    groups: list[str]
    splits: list[str] | None
    boxes: list[Path] | None = None  # per photo: VOC annotation to crop to (see photo_datasets.load_cropped)


def read_class_folders(root: Path) -> Collection:
    """``<root>/<label>/<image>``; CbirError if there are no class folders or no images."""
    paths, labels = [], []
    for folder in class_folders(root):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [folder.name] * len(files)
    if not paths:
        raise CbirError(f"no images under the class folders of {root}; expected <root>/<label>/<image>.jpg")
    return Collection(paths, labels, labels, None)


def _column(header: list[str], name: str | None, table: Path, role: str) -> int | None:
    if name is None:
        return None
    if name not in header:
        raise CbirError(
            f"{table} has no {role} column {name!r} (columns: {', '.join(header)}); set the DataModule's "
            f"{role}_column"
        )
    return header.index(name)


def read_table(
    root: Path,
    table: Path,
    path_column: str = "path",
    label_column: str = "label",
    group_column: str | None = None,
    split_column: str | None = None,
) -> Collection:
    """Rows of a CSV/TSV with a header; CbirError naming the file, row and column on bad content."""
    if not table.is_file():
        raise CbirError(
            f"labels file {table} not found; expected a .csv/.tsv with a header row "
            f"({path_column}, {label_column}, ...)"
        )
    delimiter = "\t" if table.suffix.lower() in (".tsv", ".tab") else ","
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
    except UnicodeDecodeError as err:
        raise CbirError(
            f"labels file {table} is not UTF-8 text (byte {err.object[err.start]:#x} at offset {err.start}); "
            "save it as UTF-8"
        ) from err
    if len(rows) < 2:
        raise CbirError(f"labels file {table} has no rows below its header")
    header = [name.strip() for name in rows[0]]
    columns = [
        _column(header, name, table, role)
        for name, role in ((path_column, "path"), (label_column, "label"), (group_column, "group"),
                           (split_column, "split"))
    ]
    paths, labels, groups, splits, seen = [], [], [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CbirError(f"{table} line {line}: {len(row)} fields, the header has {len(header)}")
        path, label, group, split = (row[c].strip() if c is not None else None for c in columns)
        if not path or not label:
            raise CbirError(f"{table} line {line}: empty path or label")
        photo = Path(path) if Path(path).is_absolute() else root / path
        if not photo.is_file():
            raise CbirError(f"{table} line {line}: photo {photo} not found; fix the row's path or the root")
        if photo in seen:  # a copy of a photo would be its own relevant neighbour: metrics inflated
            raise CbirError(f"{table} line {line}: photo {photo} is listed before, on line {seen[photo]}")
        seen[photo] = line
        paths.append(photo)
        labels.append(label)
        groups.append(group or label)
        splits.append((split or "").lower())
    return Collection(paths, labels, groups, splits if split_column is not None else None)


def read_stanford_dogs(root: Path) -> Collection:
    """Every photo of ``lists/train_list.mat`` and ``lists/test_list.mat`` (the release's official
    lists), labelled by its breed folder (``<wnid>-<breed>``, sorted as the release numbers them)."""
    paths, labels, boxes = [], [], []
    for split in ("train", "test"):
        listing = read_list(root / "lists" / f"{split}_list.mat")
        for file, annotation in zip(listing.files, listing.annotations, strict=True):
            photo = root / "Images" / file
            if not photo.is_file():
                raise CbirError(f"{photo} (in lists/{split}_list.mat) not found; re-extract images.tar")
            paths.append(photo)
            labels.append(Path(file).parent.name)
            boxes.append(root / "Annotation" / annotation)
    return Collection(paths, labels, labels, None, boxes)


def held_out_units(units: list[str], held_out: float | int | list[str], seed: int | None) -> set[str]:
    """The split units kept for evaluation: the names listed, or ``held_out`` of them (a count, or a
    fraction in (0, 1)) drawn reproducibly with ``seed`` from the sorted names, or the last ones in
    sorted order when ``seed`` is None (e.g. Stanford Dogs breeds 41-60 of 60)."""
    names = sorted(set(units))
    if isinstance(held_out, (list, tuple)):
        unknown = sorted(set(held_out) - set(names))
        if unknown or not 0 < len(set(held_out)) < len(names):
            raise CbirError(
                f"held_out_classes lists {len(set(held_out))} classes, unknown: {unknown[:5]}; list some "
                f"(not all) of the {len(names)} classes, e.g. {names[:3]}"
            )
        return set(held_out)
    count = int(held_out) if held_out >= 1 else int(round(held_out * len(names)))
    if held_out > 1 and held_out != int(held_out):  # neither a count nor a fraction: 1.5 is not 1
        count = 0
    if not 1 <= count < len(names):
        raise CbirError(
            f"held_out_classes={held_out} leaves {count} of {len(names)} classes for evaluation; "
            "choose a count between 1 and the number of classes - 1, or a fraction in (0, 1)"
        )
    if seed is None:
        return set(names[-count:])
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i] for i in order[:count]}


def split_collection(
    collection: Collection, held_out: float | int | list[str], seed: int | None
) -> np.ndarray:
    """Boolean mask, True for evaluation items: the split column if given, else class-disjoint units."""
    if collection.splits is not None:
        unknown = sorted(set(collection.splits) - set(TRAIN_SPLITS) - set(EVAL_SPLITS))
        if unknown:
            raise CbirError(
                f"split values {unknown} are neither {TRAIN_SPLITS} nor {EVAL_SPLITS}; fix the split column"
            )
        return np.array([split in EVAL_SPLITS for split in collection.splits], dtype=bool)
    evaluation = held_out_units(collection.groups, held_out, seed)
    return np.array([group in evaluation for group in collection.groups], dtype=bool)
