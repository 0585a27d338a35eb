"""``cbir-lightning``: LightningCLI subcommands plus the toolkit's own commands.

fit / validate / test / predict   train and evaluate from a YAML config (LightningCLI)
oneshot                           N-way one-shot accuracy of a checkpoint on Lake's run format
make-runs                         write Lake-format one-shot runs from Omniglot images
download                          fetch a data set into a root folder
evaluate                          retrieval metrics of embeddings (labels or Oxford/Paris gnd) or a checkpoint
"""

from __future__ import annotations

import sys

from cbir_lightning.errors import USER_ERRORS

TOOL_COMMANDS = ("oneshot", "make-runs", "download", "evaluate")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    from jsonargparse import ArgumentError

    try:
        if args and args[0] in TOOL_COMMANDS:
            from cbir_lightning.cli.commands import run_tool_command

            run_tool_command(args)
        else:
            from cbir_lightning.cli.lightning_cli import run_lightning_cli

            run_lightning_cli(None if argv is None else args)
    except ArgumentError as err:
        text = " ".join(str(err).split())
        sys.stderr.write(
            f"cbir-lightning: error: {text} (see `cbir-lightning {args[0] if args else ''} --help`)\n"
        )
        raise SystemExit(2) from None
    except (*USER_ERRORS, FileNotFoundError) as err:
        sys.stderr.write(f"cbir-lightning: error: {err}\n")
        raise SystemExit(1) from None
