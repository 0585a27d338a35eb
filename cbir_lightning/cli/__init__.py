"""``cbir-lightning``: LightningCLI subcommands plus the toolkit's own commands.

fit / validate / test / predict   train and evaluate from a YAML config (LightningCLI)
oneshot                           N-way one-shot accuracy of a checkpoint on Lake's run format
ensemble                          pack checkpoints of one recipe (several seeds) into one ensemble checkpoint
make-runs                         write Lake-format one-shot runs from Omniglot images
download                          fetch a data set into a root folder
evaluate                          retrieval metrics of embeddings (labels or Oxford/Paris gnd) or a checkpoint
index / search / recommend        image search: index a folder with a checkpoint, query it, find similar items
serve                             web page to search an index (upload, crop, results grid)
whiten                            fit learned (Lw) or PCA whitening for a checkpoint, saved beside it
export                            a checkpoint's embedder as ONNX (index/search/recommend --model)
"""

from __future__ import annotations

import sys

from cbir_lightning.errors import CbirError

TOOL_COMMANDS = (
    "oneshot", "ensemble", "make-runs", "download", "evaluate", "index", "search", "recommend", "serve",
    "whiten", "export",
)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    from jsonargparse import ArgumentError

    try:
        if args and args[0] == "evaluate":
            from cbir_lightning.cli.evaluate import as_validate

            args = as_validate(args)
        if args and args[0] in TOOL_COMMANDS:
            from cbir_lightning.cli.commands import run_tool_command

            run_tool_command(args)
        else:
            from cbir_lightning.cli.lightning_cli import run_lightning_cli

            run_lightning_cli(args)
    except ArgumentError as err:
        text = " ".join(str(err).split())
        sys.stderr.write(
            f"cbir-lightning: error: {text} (see `cbir-lightning {args[0] if args else ''} --help`)\n"
        )
        raise SystemExit(2) from None
    except (CbirError, FileNotFoundError) as err:
        sys.stderr.write(f"cbir-lightning: error: {err}\n")
        raise SystemExit(1) from None
    except Exception as err:  # jsonargparse wraps errors raised while instantiating the config's classes
        cause = _user_error_cause(err)
        if cause is None:
            raise
        sys.stderr.write(f"cbir-lightning: error: {cause}\n")
        raise SystemExit(1) from None


def _user_error_cause(err: BaseException) -> BaseException | None:
    """The first CbirError in ``err``'s chain of causes, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, CbirError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
