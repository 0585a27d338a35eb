"""``cbir-lightning --help``: every command's one line comes from the command itself."""

from __future__ import annotations

import inspect

import pytest

from cbir_lightning.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS
from cbir_lightning.cli.dispatch import tool_function
from cbir_lightning.cli.overview import command_lines, overview, unknown_command


@pytest.mark.parametrize("name", list(TOOL_COMMANDS))
def test_each_tool_commands_line_is_its_docstrings_one_line_summary(name):
    doc = inspect.getdoc(tool_function(name))
    summary, *rest = doc.split("\n")
    assert summary.strip() and (not rest or not rest[0].strip()), f"{name}: the summary is not one line"
    assert command_lines()[name] == summary.replace("``", "")
    assert len(summary) <= 100, f"{name}: {len(summary)} characters"


def test_the_overview_names_every_command_once_with_its_line():
    text = overview()
    lines = command_lines()
    assert list(lines) == [*LIGHTNING_COMMANDS, *TOOL_COMMANDS]
    for name, line in lines.items():
        rows = [row for row in text.splitlines() if row.split()[:1] == [name]]
        assert len(rows) == 1 and rows[0].endswith(line), (name, rows)


@pytest.mark.parametrize(
    ("typo", "close"), [("indx", ["'index'"]), ("serach", ["'search'"]), ("fitt", ["'fit'"])]
)
def test_a_mistyped_command_gets_one_line_with_the_close_ones_and_the_list(typo, close):
    line = unknown_command(typo)
    assert "\n" not in line and line.startswith("cbir-lightning: error: unknown command")
    for name in close:
        assert f"did you mean {name}" in line or f"or {name}" in line
    assert all(name in line for name in [*LIGHTNING_COMMANDS, *TOOL_COMMANDS])
