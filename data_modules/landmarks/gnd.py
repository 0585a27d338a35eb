"""Oxford / Paris ground-truth pickles, read with an unpickler that builds nothing but data.

Two formats:

* revisited (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``, Radenović et al. 2018): ``imlist`` (database
  images), ``qimlist`` (query images) and ``gnd[i]`` with ``bbx``, ``easy``, ``hard``, ``junk``
  (indices into ``imlist``); queries are not in the database.
* original (``gnd_oxford5k.pkl``, ``gnd_paris6k.pkl``): ``imlist``, ``qidx`` and ``gnd[i]`` with
  ``bbx``, ``ok``, ``junk``; query ``i`` is database image ``imlist[qidx[i]]``.

The pickles are read with :func:`data_modules.io.pickles.safe_load_pickle`, which builds nothing but data,
so a tampered file fails with one line.

:func:`restrict_gnd` keeps the part of a ground truth whose images are at hand (a few photos of the
set, plus distractors), re-indexed, for sanity checks on subsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cbir_lightning.errors import CbirError
from data_modules.io.pickles import safe_load_pickle


@dataclass
class GroundTruth:
    """A ground-truth file: image lists and, per query, lists of database indices."""

    path: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict[str, np.ndarray]]
    revisited: bool  # easy/hard/junk (revisited) or ok/junk (original)
    boxes: list[list[float] | None] | None = None  # per query: its ``bbx`` (x1, y1, x2, y2) or None

    @property
    def num_queries(self) -> int:
        return len(self.gnd)

    @property
    def name(self) -> str:
        return self.path.stem.removeprefix("gnd_")


def load_gnd(path: str | Path) -> GroundTruth:
    """Read ``gnd_*.pkl`` in either format, checking its structure and indices."""
    path = Path(path)
    data = safe_load_pickle(path)
    try:
        return _ground_truth(path, data)
    except CbirError:
        raise
    except (TypeError, ValueError, IndexError) as err:  # e.g. an index that is not a number, ragged lists
        reason = " ".join(str(err).split())[:200]
        raise CbirError(
            f"{path}: malformed ground truth ({reason}); expected a revisitop gnd_*.pkl file"
        ) from err


def _ground_truth(path: Path, data) -> GroundTruth:
    if not isinstance(data, dict) or "imlist" not in data or "gnd" not in data:
        raise CbirError(f"{path}: expected a dict with 'imlist' and 'gnd' (a revisitop gnd_*.pkl file)")
    imlist, entries = [str(x) for x in data["imlist"]], list(data["gnd"])
    revisited = bool(entries) and isinstance(entries[0], dict) and "easy" in entries[0]
    keys = ("easy", "hard", "junk") if revisited else ("ok", "junk")
    if revisited:
        qimlist = [str(x) for x in data.get("qimlist", [])]
    elif "qidx" in data:
        qimlist = [imlist[int(i)] for i in data["qidx"]]
    else:
        qimlist = [str(x) for x in data.get("qimlist", [])]
    if len(qimlist) != len(entries):
        raise CbirError(f"{path}: {len(entries)} gnd entries but {len(qimlist)} queries")
    gnd, boxes = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(key not in entry for key in keys):
            raise CbirError(f"{path}: gnd[{i}] lacks one of {list(keys)}")
        lists = {key: np.asarray(entry[key], dtype=np.int64).reshape(-1) for key in keys}
        for key, values in lists.items():
            if len(values) and (values.min() < 0 or values.max() >= len(imlist)):
                raise CbirError(
                    f"{path}: gnd[{i}]['{key}'] has an index outside imlist (0..{len(imlist) - 1})"
                )
        gnd.append(lists)
        bbx = entry.get("bbx")
        boxes.append([float(v) for v in bbx] if bbx is not None and len(bbx) == 4 else None)
    return GroundTruth(path=path, imlist=imlist, qimlist=qimlist, gnd=gnd, revisited=revisited, boxes=boxes)


def restrict_gnd(truth: GroundTruth, present: Iterable[str], distractors: Sequence[str] = ()) -> GroundTruth:
    """The ground truth of the images in ``present`` only, with ``distractors`` added to the database.

    Queries: the ``qimlist`` entries in ``present`` (in ``qimlist`` order, with their boxes). Database:
    the ``imlist`` entries in ``present`` (in ``imlist`` order), then the ``distractors`` (names listed in
    no query's lists, so they count as negatives). Every per-query list (``easy``/``hard``/``junk`` or
    ``ok``/``junk``) keeps its present images, re-indexed into the new database; absent images are
    dropped from it. So a present junk image is still taken out of the ranking, AP divides by the
    present positives only, and a query left without positives is skipped by the metrics, as the
    protocol skips any query without positives.
    """
    present = set(present)
    clash = present.intersection(distractors)
    if clash:
        raise CbirError(f"{truth.path}: distractor {sorted(clash)[0]!r} is also an image of the ground truth")
    kept = [i for i, name in enumerate(truth.imlist) if name in present]
    new_index = np.full(len(truth.imlist), -1, dtype=np.int64)
    new_index[kept] = np.arange(len(kept))
    queries = [q for q, name in enumerate(truth.qimlist) if name in present]
    gnd = []
    for q in queries:
        lists = {}
        for key, values in truth.gnd[q].items():
            mapped = new_index[values]
            lists[key] = mapped[mapped >= 0]
        gnd.append(lists)
    boxes = [truth.boxes[q] for q in queries] if truth.boxes is not None else None
    return replace(
        truth,
        imlist=[truth.imlist[i] for i in kept] + list(distractors),
        qimlist=[truth.qimlist[q] for q in queries],
        gnd=gnd,
        boxes=boxes,
    )
