"""``cbir-lightning --help`` (or no command): every command with one line; a mistyped command in one line.

The line of a toolkit command is the summary line (the first line) of its function's docstring, the one
jsonargparse shows under ``cbir-lightning COMMAND --help``; the Lightning commands' lines are
``LIGHTNING_COMMANDS``, which ``lightning_cli`` also gives LightningCLI as each subcommand's description.
The docstrings are read from the source files without importing them, so the overview needs neither torch
nor Lightning and prints at once.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import re
import sys

import cbir_lightning
from cbir_lightning.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS

PROG = "cbir-lightning"


def command_names() -> list[str]:
    return [*LIGHTNING_COMMANDS, *TOOL_COMMANDS]


def docstring_summary(target: str) -> str:
    """The summary line of the docstring of ``module:function``, read from the module's source file."""
    module, _, function = target.partition(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"{module}: no source file")
    with open(spec.origin, encoding="utf-8") as file:
        tree = ast.parse(file.read(), spec.origin)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            doc = ast.get_docstring(node) or ""
            return _plain(doc.strip().split("\n", 1)[0])
    raise LookupError(f"{target}: no such function")


def _plain(text: str) -> str:
    """``code`` of reStructuredText as plain text."""
    return re.sub(r"``(.+?)``", r"\1", text).strip()


def command_lines() -> dict[str, str]:
    """Every command and its one line, Lightning's four first."""
    lines = dict(LIGHTNING_COMMANDS)
    lines.update({name: docstring_summary(target) for name, target in TOOL_COMMANDS.items()})
    return lines


def overview() -> str:
    lines = command_lines()
    pad = max(map(len, lines)) + 2

    def rows(names) -> list[str]:
        return [f"  {name:<{pad}}{lines[name]}" for name in names]

    summary = _plain((cbir_lightning.__doc__ or "").strip().split("\n", 1)[0])
    return "\n".join(
        [
            f"usage: {PROG} COMMAND [options]",
            "",
            summary,
            "",
            "Lightning commands (--config CONFIG.yaml; override any value: --trainer.max_epochs 3):",
            *rows(LIGHTNING_COMMANDS),
            "",
            "Toolkit commands:",
            *rows(TOOL_COMMANDS),
            "",
            f"`{PROG} COMMAND --help` lists a command's options.",
        ]
    )


def print_overview() -> None:
    """Print the overview; a closed pipe (``| head``) is no error."""
    try:
        print(overview(), flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def unknown_command(name: str) -> str:
    """One line for a command that does not exist: the close matches, then every command."""
    names = command_names()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    return f"{PROG}: error: unknown command {name!r}{hint} Commands: {', '.join(names)} (see `{PROG} --help`)"
