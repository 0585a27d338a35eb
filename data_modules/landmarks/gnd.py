"""Oxford / Paris ground-truth pickles, read with an unpickler that builds nothing but data.

Two formats:

* revisited (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``, Radenović et al. 2018): ``imlist`` (database
  images), ``qimlist`` (query images) and ``gnd[i]`` with ``bbx``, ``easy``, ``hard``, ``junk``
  (indices into ``imlist``); queries are not in the database.
* original (``gnd_oxford5k.pkl``, ``gnd_paris6k.pkl``): ``imlist``, ``qidx`` and ``gnd[i]`` with
  ``bbx``, ``ok``, ``junk``; query ``i`` is database image ``imlist[qidx[i]]``.

A pickle can run code when it is loaded; :class:`DataUnpickler` refuses every global except numpy's
array/dtype/scalar constructors and a few builtin containers, so a tampered file fails with one line.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_modules.errors import DataError

_ALLOWED = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes of arrays pickled with protocol 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *(
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class DataUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings, numbers and numpy arrays; anything else raises DataError."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays from Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DataError(
            f"{self.path}: refusing to unpickle {module}.{name} (only plain containers and numpy arrays "
            "are allowed); use the official ground-truth file"
        )


def safe_load_pickle(path: str | Path):
    """Load a data-only pickle (see :class:`DataUnpickler`); DataError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"ground-truth file {path} not found; get it with "
            "`cbir-lightning download --dataset roxford5k --root DIR` (or rparis6k)"
        )
    try:
        with path.open("rb") as f:
            return DataUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as err:  # truncated or not a pickle: every unpickling error is a bad file
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(
            f"{path} is not a readable ground-truth pickle ({reason}); download it again"
        ) from err


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
        raise DataError(f"{path}: expected a dict with 'imlist' and 'gnd' (a revisitop gnd_*.pkl file)")
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
        raise DataError(f"{path}: {len(entries)} gnd entries but {len(qimlist)} queries")
    gnd = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or any(key not in entry for key in keys):
            raise DataError(f"{path}: gnd[{i}] lacks one of {list(keys)}")
        lists = {key: np.asarray(entry[key], dtype=np.int64).reshape(-1) for key in keys}
        for key, values in lists.items():
            if len(values) and (values.min() < 0 or values.max() >= len(imlist)):
                raise DataError(
                    f"{path}: gnd[{i}]['{key}'] has an index outside imlist (0..{len(imlist) - 1})"
                )
        gnd.append(lists)
    return GroundTruth(path=path, imlist=imlist, qimlist=qimlist, gnd=gnd, revisited=revisited)
