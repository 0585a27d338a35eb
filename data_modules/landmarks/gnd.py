"""Oxford / Paris ground-truth pickles, read with an unpickler that builds nothing but data.

Two formats:

* revisited (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``, Radenović et al. 2018): ``imlist`` (database
  images), ``qimlist`` (query images) and ``gnd[i]`` with ``bbx``, ``easy``, ``hard``, ``junk``
  (indices into ``imlist``); queries are not in the database.
* original (``gnd_oxford5k.pkl``, ``gnd_paris6k.pkl``): ``imlist``, ``qidx`` and ``gnd[i]`` with
  ``bbx``, ``ok``, ``junk``; query ``i`` is database image ``imlist[qidx[i]]``.

The pickles are read with :func:`data_modules.io.pickles.safe_load_pickle`, which builds nothing but data,
so a tampered file fails with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    gnd = []
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
    return GroundTruth(path=path, imlist=imlist, qimlist=qimlist, gnd=gnd, revisited=revisited)
