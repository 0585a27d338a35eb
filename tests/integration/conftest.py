"""Fixtures of the integration tests (CLI runs in subprocesses, fits, DDP, notebooks, benchmarks). Every
test under tests/integration/ gets the ``integration`` marker: ``pytest -m "not integration"`` is the fast
tier."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import TINY_ARGS, last_json, run_cli
from helpers.paths import REPO


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_run(omniglot_root, tmp_path_factory) -> dict:
    """A tiny `fit` of the demo config on the real small sets: its workdir, JSON result and checkpoint."""
    work = tmp_path_factory.mktemp("tiny_fit")
    proc = run_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "omniglot_koch.yaml"),
            "--data.init_args.root",
            str(omniglot_root),
            *TINY_ARGS,
        ],
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = last_json(proc.stdout)
    ckpt = Path(result["checkpoint"])
    return {
        "work": work,
        "result": result,
        "ckpt": ckpt if ckpt.is_absolute() else work / ckpt,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }
