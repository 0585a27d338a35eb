"""Read an offline W&B run (``wandb/offline-run-*/run-*.wandb``) without the network: summary, history
and config, e.g. to check what a run logged before ``wandb sync``.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks
of records, each ``crc32 (4) | length (2) | type (1) | payload``; types 1 full, 2 first, 3 middle, 4 last.
Each payload is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from cbir_lightning.errors import CbirError

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _truncated(name: str, offset: int) -> CbirError:
    return CbirError(
        f"{name} is truncated (a record is cut at byte {offset}): the run was killed while writing it, or "
        "is still being written (read it after the run's process ends, or after wandb.teardown()); "
        "otherwise use another run folder"
    )


def _payloads(data: bytes, name: str):
    """The record payloads of a ``.wandb`` file's bytes; CbirError naming ``name`` when the header is bad or
    a record is cut short (a file killed mid-write)."""
    if len(data) < _HEADER:
        raise _truncated(name, len(data))
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise CbirError(f"{name} is not a W&B run file (bad header); pass the run-*.wandb of an offline run")
    pos, pending = _HEADER, None
    while pos < len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer padding
            pos += _BLOCK - pos % _BLOCK
            continue
        if pos + _HEADER > len(data):
            raise _truncated(name, pos)
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0:  # zero padding at the end of a file still being written
            break
        if pos + _HEADER + length > len(data):
            raise _truncated(name, pos)
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE and pending is not None:
            pending += chunk
        elif kind == _LAST and pending is not None:
            yield pending + chunk
            pending = None
        else:
            raise CbirError(f"{name} has a corrupt record (type {kind}) at byte {pos}; use another run")
    if pending is not None:
        raise _truncated(name, pos)


def _parse(payload: bytes, name: str):
    # wandb's protobuf records (heavy import): only once a .wandb file is read
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    record = wandb_internal_pb2.Record()
    try:
        record.ParseFromString(payload)
    except DecodeError as err:
        raise CbirError(f"{name} has a corrupt record ({err}); use another run folder") from err
    return record


def read_offline_run(run_dir: str | Path) -> dict:
    """``{"summary": {key: value}, "history": [row, ...], "config": {key: value}}`` of an offline run;
    CbirError naming the file when it is cut short or corrupt."""
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise CbirError(f"no run-*.wandb file in {run_dir}; pass a wandb/offline-run-* folder")
    summary, history, config = {}, [], {}

    def key_of(item) -> str:
        return item.key or "/".join(item.nested_key)

    for payload in _payloads(files[0].read_bytes(), str(files[0])):
        record = _parse(payload, str(files[0]))
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update({key_of(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "history":
            row = {key_of(i): json.loads(i.value_json) for i in record.history.item}
            history.append(row)
            summary.update({k: v for k, v in row.items() if not k.startswith("_")})
        elif kind == "config":
            config.update({key_of(i): json.loads(i.value_json) for i in record.config.update})
    return {"summary": summary, "history": history, "config": config}
