"""Data-only pickles: an unpickler that builds nothing but plain containers and numpy arrays.

A pickle can run code when it is loaded; :class:`DataUnpickler` refuses every global except numpy's
array/dtype/scalar constructors and a few builtin containers, so a tampered file fails with one line.
Used for the Oxford / Paris ground truth, the retrieval-SfM-120k database and CIFAR-10's batches.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from cbir_lightning.errors import CbirError

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
    """Unpickles plain containers, strings, numbers and numpy arrays; anything else raises CbirError."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays from Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise CbirError(
            f"{self.path}: refusing to unpickle {module}.{name} (only plain containers and numpy arrays "
            "are allowed); use the official ground-truth file"
        )


def safe_load_pickle(path: str | Path):
    """Load a data-only pickle (see :class:`DataUnpickler`); CbirError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(
            f"ground-truth file {path} not found; get it with "
            "`cbir-lightning download --dataset roxford5k --root DIR` (or rparis6k)"
        )
    try:
        with path.open("rb") as f:
            return DataUnpickler(f, path).load()
    except CbirError:
        raise
    except Exception as err:  # truncated or not a pickle: every unpickling error is a bad file
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CbirError(
            f"{path} is not a readable ground-truth pickle ({reason}); download it again"
        ) from err
