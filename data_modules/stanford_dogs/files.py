"""Stanford Dogs release files: ``lists/{train,test}_list.mat`` and the PASCAL VOC box annotations.

A list file holds ``file_list`` (cell array of ``<wnid>-<breed>/<wnid>_<n>.jpg`` under ``Images/``),
``annotation_list`` (cell array of ``<wnid>-<breed>/<wnid>_<n>`` under ``Annotation/``) and ``labels``
(1-based breed numbers, ``[N, 1]``). An annotation is VOC XML with one ``object/bndbox`` per dog
(``xmin``, ``ymin``, ``xmax``, ``ymax`` in pixels).
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir_lightning.errors import CbirError

LIST_FIELDS = ("file_list", "annotation_list", "labels")


@dataclass
class DogsList:
    files: list[str]
    annotations: list[str]
    labels: np.ndarray  # 0-based


def _strings(cell: np.ndarray) -> list[str]:
    """A loadmat cell array of strings ([N, 1] object array of 1-element string arrays) -> list."""
    return [str(np.asarray(item).reshape(-1)[0]) for item in np.asarray(cell, dtype=object).reshape(-1)]


def read_list(path: Path) -> DogsList:
    """Read ``train_list.mat`` / ``test_list.mat``; CbirError naming the file for anything unexpected."""
    from scipy.io import loadmat  # heavy import: only when the release's .mat lists are read

    if not path.is_file():
        raise CbirError(
            f"{path} not found; expected the Stanford Dogs release (Images/, Annotation/, lists/) "
            "under data.init_args.root"
        )
    try:
        mat = loadmat(str(path))
    except Exception as err:  # scipy raises several types for non-.mat data
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CbirError(f"{path} is not a readable .mat file ({reason}); re-extract lists.tar") from err
    missing = [f for f in LIST_FIELDS if f not in mat]
    if missing:
        raise CbirError(
            f"{path} lacks {missing} (has {sorted(k for k in mat if not k.startswith('__'))}); "
            "use the release's lists/train_list.mat and test_list.mat"
        )
    try:
        files, annotations = _strings(mat["file_list"]), _strings(mat["annotation_list"])
        labels = np.asarray(mat["labels"]).reshape(-1).astype(np.int64) - 1
    except (IndexError, ValueError, TypeError) as err:
        raise CbirError(f"{path}: file_list/annotation_list/labels are not in the release's format") from err
    if not (len(files) == len(annotations) == len(labels)) or (len(labels) and labels.min() < 0):
        raise CbirError(
            f"{path}: {len(files)} files, {len(annotations)} annotations and {len(labels)} labels (1-based) "
            "do not match; use the release's list files"
        )
    return DogsList(files, annotations, labels)


def read_box(path: Path, width: int, height: int) -> tuple[int, int, int, int]:
    """The largest ``bndbox`` of a VOC annotation as ``(left, top, right, bottom)`` for ``PIL.crop``,
    clamped to the ``width`` x ``height`` image (with a warning when it lay outside)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise CbirError(f"{path}: unreadable annotation ({err}); re-extract annotation.tar") from err
    boxes = []
    for box in root.iter("bndbox"):
        try:
            boxes.append(tuple(int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
        except (TypeError, ValueError) as err:
            raise CbirError(
                f"{path}: a bndbox lacks numeric xmin/ymin/xmax/ymax; fix or re-extract it"
            ) from err
    if not boxes:
        raise CbirError(f"{path}: no object/bndbox in the annotation; re-extract annotation.tar")
    x0, y0, x1, y1 = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    clamped = (
        max(0, min(x0, width)),
        max(0, min(y0, height)),
        max(0, min(x1, width)),
        max(0, min(y1, height)),
    )
    if clamped != (x0, y0, x1, y1):
        warnings.warn(
            f"{path}: box {(x0, y0, x1, y1)} lies outside the {width}x{height} image; clamped to {clamped}",
            stacklevel=2,
        )
    if clamped[2] <= clamped[0] or clamped[3] <= clamped[1]:
        raise CbirError(
            f"{path}: box {(x0, y0, x1, y1)} has no area inside the {width}x{height} image; fix it"
        )
    return clamped
