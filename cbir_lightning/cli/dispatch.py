"""Running a toolkit command (``cbir_lightning.cli.TOOL_COMMANDS``) with jsonargparse: only the command run
is imported, so ``index``/``search``/``convert`` on a model file never import the data sets' package."""

from __future__ import annotations

import importlib
import inspect
import json

from jsonargparse import CLI

from cbir_lightning.cli import TOOL_COMMANDS


def normalize_flags(args: list[str], function) -> list[str]:
    """Accept ``--query-labels`` for ``--query_labels``, a bare ``--exclude-self`` for
    ``--exclude_self true``, and ``--config`` for evaluate's ``--config_file``."""
    params = inspect.signature(function).parameters
    bools = {name for name, p in params.items() if p.annotation in (bool, "bool")}
    out = []
    for i, token in enumerate(args):
        if not token.startswith("--") or len(token) == 2:
            out.append(token)
            continue
        flag, eq, value = token[2:].partition("=")
        name = flag.replace("-", "_")
        if name == "config" and "config_file" in params:
            name = "config_file"
        out.append(f"--{name}{eq}{value}")
        if name in bools and not eq and (i + 1 == len(args) or args[i + 1].startswith("--")):
            out.append("true")
    return out


def tool_function(name: str):
    """The function of the toolkit command ``name`` (``cbir_lightning.cli.TOOL_COMMANDS``)."""
    module, _, function = TOOL_COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run_tool_command(args: list[str]) -> None:
    # only the command run is imported (``index``/``search`` need neither data sets nor Lightning's CLI)
    names = [args[0]] if args and args[0] in TOOL_COMMANDS else list(TOOL_COMMANDS)
    commands = {name: tool_function(name) for name in names}
    if args and args[0] in commands:
        args = [args[0], *normalize_flags(args[1:], commands[args[0]])]
    result = CLI(commands, args=args, as_positional=False, exit_on_error=False)
    if result is not None:  # None: a DDP worker process (rank 0 prints the result)
        print(json.dumps(result), flush=True)
