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


def _payloads(data: bytes, name: str):
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise CbirError(f"{name} is not a W&B run file (bad header); pass the run-*.wandb of an offline run")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
        else:  # zero padding at the end of a file still being written
            break


def read_offline_run(run_dir: str | Path) -> dict:
    """``{"summary": {key: value}, "history": [row, ...], "config": {key: value}}`` of an offline run."""
    from wandb.proto import wandb_internal_pb2

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise CbirError(f"no run-*.wandb file in {run_dir}; pass a wandb/offline-run-* folder")
    summary, history, config = {}, [], {}

    def key_of(item) -> str:
        return item.key or "/".join(item.nested_key)

    for payload in _payloads(files[0].read_bytes(), str(files[0])):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
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
