"""Experiment configs on a base config: ``extends: base.yaml``.

A config file may name one base config, relative to its own folder (a base may extend another)::

    extends: base_fit.yaml
    trainer:
      max_epochs: 3

``read_config`` merges each file over its base: mappings merge key by key, any other value (a list, a
number, a string, null) replaces the base's. ``trainer.callbacks`` may be a mapping name -> callback, so a
config changes one callback by its name (``best: {init_args: {monitor: val/oneshot_20way}}``), adds one
(after the base's), or drops one (``last: null``); after the merge the mapping becomes LightningCLI's list
of its non-null values, in the mapping's order. A list there replaces the base's callbacks altogether.

On the command line a named callback is changed the same way, by its name:
``--trainer.callbacks.feature_cache.init_args.views 4`` (or ``=4``), ``--trainer.callbacks.unfreeze null``
(drop it); ``split_callback_overrides`` takes those options out of the arguments and ``read_config`` merges
them into the config's mapping before it becomes the list.

``${...}`` interpolations are kept as written: LightningCLI (``omegaconf+``) resolves them after the
command-line overrides, so ``${trainer.default_root_dir}`` in a base follows the experiment's value.
"""

from __future__ import annotations

import contextvars
from pathlib import Path

import yaml
from jsonargparse import get_loader

from cbir_lightning.errors import CbirError

EXTENDS = "extends"
CALLBACK_OPTION = "--trainer.callbacks."
LIGHTNING_CALLBACK_KEYS = ("init_args", "class_path", "dict_kwargs")  # jsonargparse's, after callbacks+=
# the named-callback options of the command being parsed, {name: override mapping} (None: none)
CALLBACK_OVERRIDES: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "callback_overrides", default=None
)


def merge(base, override):
    """``override`` over ``base``: two mappings merge key by key (``base``'s keys first, then the new
    ones); any other ``override`` value replaces ``base``."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(base[key], value) if key in base else value
    return merged


def callbacks_as_list(config: dict) -> dict:
    """``config`` with a mapping under ``trainer.callbacks`` turned into the list of its non-null values."""
    trainer = config.get("trainer")
    if not (isinstance(trainer, dict) and isinstance(trainer.get("callbacks"), dict)):
        return config
    callbacks = [value for value in trainer["callbacks"].values() if value is not None]
    return {**config, "trainer": {**trainer, "callbacks": callbacks}}


def _nest(keys: list[str], value):
    """``a.b.c`` = value as ``{"a": {"b": {"c": value}}}``."""
    return value if not keys else {keys[0]: _nest(keys[1:], value)}


def split_callback_overrides(args: list[str], names: list[str]) -> tuple[list[str], dict]:
    """``args`` without the ``--trainer.callbacks.NAME[.KEY...] VALUE`` (or ``=VALUE``) options whose NAME
    is one of ``names`` (the callbacks the configs name), and those as ``{NAME: {KEY: ...}}`` (values read
    as YAML: ``4``, ``null``, ``[1, 2]``). Other ``--trainer.callbacks.*`` options stay LightningCLI's
    (``--trainer.callbacks+=CLASS --trainer.callbacks.ARG VALUE`` sets an argument of the callback just
    added); one with a dotted path under a name the configs do not have is one line listing the names."""
    rest, overrides, i = [], {}, 0
    while i < len(args):
        arg = args[i]
        path = arg[len(CALLBACK_OPTION) :].split("=", 1)[0] if arg.startswith(CALLBACK_OPTION) else ""
        name = path.split(".")[0]
        if names and "." in path and name not in names and name not in LIGHTNING_CALLBACK_KEYS:
            raise CbirError(
                f"{CALLBACK_OPTION}{name}...: the config has no callback {name!r} "
                f"(its callbacks are named {', '.join(names)})"
            )
        if name not in names:
            rest.append(arg)
            i += 1
            continue
        if "=" in arg:
            value, i = arg.split("=", 1)[1], i + 1
        elif i + 1 < len(args):
            value, i = args[i + 1], i + 2
        else:
            raise CbirError(f"{arg} needs a value, e.g. {arg} 4 (or {arg} null to drop the callback)")
        overrides = merge(overrides, _nest(path.split("."), yaml.safe_load(value)))
    return rest, overrides


def callback_names(args: list[str]) -> list[str]:
    """The names of the callbacks that the ``--config`` files in ``args`` (with their bases) name; files
    that are missing or unreadable are left to the parser, which says why."""
    names: list[str] = []
    for i, arg in enumerate(args):
        file = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(args):
            file = args[i + 1]
        if not file or not Path(file).is_file():
            continue
        try:
            data = _load(Path(file), (Path(file).resolve(),))
        except CbirError:
            continue
        callbacks = (data.get("trainer") or {}).get("callbacks") if isinstance(data, dict) else None
        names += [n for n in callbacks if n not in names] if isinstance(callbacks, dict) else []
    return names


def apply_callback_overrides(data, overrides: dict):
    """``data`` (a config with its bases merged) with those of ``overrides`` merged into its named
    callbacks whose names it has (several ``--config`` files: each takes its own)."""
    callbacks = (data.get("trainer") or {}).get("callbacks") if isinstance(data, dict) else None
    mine = {k: v for k, v in overrides.items() if isinstance(callbacks, dict) and k in callbacks}
    return merge(data, {"trainer": {"callbacks": mine}}) if mine else data


def _load(path: Path, chain: tuple[Path, ...]):
    """The YAML in ``path`` (loaded as LightningCLI loads it), with its chain of bases merged in."""
    try:
        data = get_loader("yaml")(path.read_text())
    except OSError as err:
        raise CbirError(f"config file {path} cannot be read ({err.strerror}); check the path") from err
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise CbirError(f"config file {path} is not readable YAML ({reason})") from err
    if not (isinstance(data, dict) and EXTENDS in data):
        return data
    data = dict(data)
    name = data.pop(EXTENDS)
    if not isinstance(name, str) or not name.strip():
        raise CbirError(
            f"config file {path}: `{EXTENDS}` must name one base config file, relative to the config's "
            f"folder (e.g. `{EXTENDS}: base_fit.yaml`), got {name!r}"
        )
    base = (path.parent / name).resolve()
    if base in chain:
        loop = " -> ".join(str(p) for p in (*chain, base))
        raise CbirError(f"config file {path}: `{EXTENDS}` loops ({loop}); remove one `{EXTENDS}`")
    if not base.is_file():
        raise CbirError(
            f"config file {path}: its base config {base} (`{EXTENDS}: {name}`) does not exist; write the "
            f"base's path relative to the config's folder {path.parent} (the shipped bases are "
            "configs/base.yaml and configs/base_fit.yaml)"
        )
    base_data = _load(base, (*chain, base))
    if not isinstance(base_data, dict):
        raise CbirError(f"config file {base} (the base of {path}) is not a YAML mapping of config keys")
    return merge(base_data, data)


def uses_bases(data) -> bool:
    """Whether a loaded config needs ``read_config``: it extends a base or names its callbacks."""
    if not isinstance(data, dict):
        return False
    trainer = data.get("trainer")
    return EXTENDS in data or (isinstance(trainer, dict) and isinstance(trainer.get("callbacks"), dict))


def read_config(path: str | Path, callback_overrides: dict | None = None):
    """The config in ``path`` as one self-contained config: its bases merged in, ``callback_overrides``
    (``split_callback_overrides``) merged into its named callbacks, ``trainer.callbacks`` a list,
    ``${...}`` interpolations unresolved. CbirError (one line) when a file is missing or unreadable or an
    ``extends`` value is bad."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"config file {path} not found; pass the YAML used with `cbir-lightning fit`")
    data = _load(path, (path.resolve(),))
    if callback_overrides:
        data = apply_callback_overrides(data, callback_overrides)
    return callbacks_as_list(data) if isinstance(data, dict) else data
