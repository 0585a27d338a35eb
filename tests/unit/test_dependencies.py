"""Declared dependency floors admit what the code calls (the oldest allowed release must not crash)."""

from __future__ import annotations

import re

import tomllib
from helpers.paths import REPO

# Calls whose keyword appeared in a given release: (package, first release with it, where we call it).
NEEDED = [
    ("scipy", (1, 12), "scipy.sparse.linalg.cg(rtol=) in cbir_lightning/rerank/diffusion.py"),
]


def declared_floor(package: str) -> tuple[int, ...]:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        found = re.fullmatch(rf"{package}\s*>=\s*([\d.]+)", requirement.split(";")[0].strip())
        if found:
            return tuple(int(part) for part in found.group(1).split("."))
    raise AssertionError(f"{package} has no '>=' floor in pyproject.toml")


def test_floors_admit_the_calls_we_make():
    for package, first, where in NEEDED:
        assert declared_floor(package) >= first, f"{package} floor below {first} needed by {where}"


def test_the_call_exists_in_the_installed_release():
    import inspect

    from scipy.sparse.linalg import cg

    assert "rtol" in inspect.signature(cg).parameters
