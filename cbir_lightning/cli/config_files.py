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

``${...}`` interpolations are kept as written: LightningCLI (``omegaconf+``) resolves them after the
command-line overrides, so ``${trainer.default_root_dir}`` in a base follows the experiment's value.
"""

from __future__ import annotations

from pathlib import Path

from cbir_lightning.errors import CbirError

EXTENDS = "extends"


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


def _load(path: Path, chain: tuple[Path, ...]):
    """The YAML in ``path`` (loaded as LightningCLI loads it), with its chain of bases merged in."""
    from jsonargparse import get_loader

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


def read_config(path: str | Path):
    """The config in ``path`` as one self-contained config: its bases merged in, ``trainer.callbacks`` a
    list, ``${...}`` interpolations unresolved. CbirError (one line) when a file is missing or unreadable
    or an ``extends`` value is bad."""
    path = Path(path)
    if not path.is_file():
        raise CbirError(f"config file {path} not found; pass the YAML used with `cbir-lightning fit`")
    data = _load(path, (path.resolve(),))
    return callbacks_as_list(data) if isinstance(data, dict) else data
