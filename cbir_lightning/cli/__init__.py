"""``cbir-lightning``: LightningCLI subcommands plus the toolkit's own commands.

``LIGHTNING_COMMANDS`` (fit / validate / test / predict: a YAML config, LightningCLI) and ``TOOL_COMMANDS``
(each a function whose docstring's first line is its one line in ``cbir-lightning --help``) are the one
list of commands: ``main`` dispatches on them, ``overview`` prints them (``--help``, no command) and names
the close ones for a mistyped command.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading

from cbir_lightning.errors import CbirError

# The Lightning subcommands and their one line (also their description in `cbir-lightning fit --help`).
LIGHTNING_COMMANDS = {
    "fit": "Train from a YAML config; validates the best checkpoint and prints one JSON line.",
    "validate": "Retrieval metrics of a config's model or of a checkpoint (--ckpt_path), as JSON.",
    "test": "Retrieval metrics on the test split (--ckpt_path CKPT), as JSON.",
    "predict": "Embeddings of the evaluation split (Lightning's predict loop).",
}

# The toolkit's commands: name -> "module:function" (jsonargparse builds each command's options from it).
TOOL_COMMANDS = {
    "index": "cbir_lightning.cli.search_commands:index",
    "search": "cbir_lightning.cli.search_commands:search",
    "recommend": "cbir_lightning.cli.search_commands:recommend",
    "serve": "cbir_lightning.cli.search_commands:serve",
    "export": "cbir_lightning.cli.search_commands:export",
    "convert": "cbir_lightning.cli.search_commands:convert",
    "evaluate": "cbir_lightning.cli.evaluate:evaluate",
    "oneshot": "cbir_lightning.cli.commands:oneshot",
    "ensemble": "cbir_lightning.cli.commands:ensemble",
    "whiten": "cbir_lightning.cli.whiten:whiten",
    "make-runs": "cbir_lightning.cli.commands:make_runs",
    "download": "cbir_lightning.cli.commands:download",
}


def _leave_on_interrupt(signum, frame) -> None:
    """Ctrl-C while starting (imports, parsing: nothing written yet): one line and exit 130 at once. A
    KeyboardInterrupt raised inside a C extension's import aborts the interpreter (torch) or leaves a
    half-imported module whose next import fails (numpy)."""
    os.write(2, b"cbir-lightning: interrupted\n")
    os._exit(130)


def interruptible() -> None:
    """From here on Ctrl-C raises KeyboardInterrupt, once the command starts its work: Lightning stops a
    fit gracefully, ``index`` removes what it had begun, ``serve`` shuts down."""
    if signal.getsignal(signal.SIGINT) is _leave_on_interrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    """Run a command; user errors and Ctrl-C are one line on stderr (exit 1, 2 or 130), no traceback."""
    starting = threading.current_thread() is threading.main_thread()
    starting = starting and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if starting:
        signal.signal(signal.SIGINT, _leave_on_interrupt)
    try:
        _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        interruptible()


def _main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        from cbir_lightning.cli.overview import print_overview  # reads the lists above: a cycle at the top

        print_overview()
        raise SystemExit(0 if args else 2)  # no command: nothing ran
    if not args[0].startswith("-") and args[0] not in (*LIGHTNING_COMMANDS, *TOOL_COMMANDS):
        from cbir_lightning.cli.overview import unknown_command  # reads the lists above: a cycle at the top

        sys.stderr.write(unknown_command(args[0]) + "\n")
        raise SystemExit(2)
    # imported once main() has taken Ctrl-C over: an interrupt while this module is imported is not one line
    from jsonargparse import ArgumentError

    try:
        if args[0] == "evaluate":
            from cbir_lightning.cli.evaluate import as_validate  # data sets: evaluate only

            args = as_validate(args)
        if args[0] in TOOL_COMMANDS:
            from cbir_lightning.cli.dispatch import run_tool_command  # imports the command run only (a cycle)

            interruptible()
            run_tool_command(args)
        else:
            from cbir_lightning.cli.lightning_cli import run_lightning_cli  # Lightning's CLI: fit etc. only

            run_lightning_cli(args)
    except ArgumentError as err:
        text = " ".join(str(err).split())
        sys.stderr.write(f"cbir-lightning: error: {text} (see `cbir-lightning {args[0]} --help`)\n")
        raise SystemExit(2) from None
    except (CbirError, FileNotFoundError) as err:
        sys.stderr.write(f"cbir-lightning: error: {_one_line(err)}\n")
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Ctrl-C while starting (Lightning handles it during a fit)
        sys.stderr.write("cbir-lightning: interrupted\n")
        raise SystemExit(130) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        sys.stderr.write(f"cbir-lightning: error: {err.strerror}{where}; free space and run again\n")
        raise SystemExit(1) from None
    except Exception as err:  # jsonargparse wraps errors raised while instantiating the config's classes
        cause = _user_error_cause(err)
        if cause is None:
            raise
        sys.stderr.write(f"cbir-lightning: error: {_one_line(cause)}\n")
        raise SystemExit(1) from None


def _one_line(err: BaseException) -> str:
    """The error's message; a CbirError raised in a DataLoader worker reaches the main process with the
    worker's traceback in its message (PyTorch re-raises it so), and is reported by its own last line."""
    text = str(err)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split("CbirError: ", 1)[-1]
    return text


def _user_error_cause(err: BaseException) -> BaseException | None:
    """The first CbirError in ``err``'s chain of causes, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, CbirError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
