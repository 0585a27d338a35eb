"""Shim: ``DataError`` is :class:`cbir_lightning.errors.CbirError`, kept for code importing the old name."""

from cbir_lightning.errors import CbirError

DataError = CbirError
