"""Content digests: a file's (what the search index, the model file and the ONNX export record to tell a
changed file from an unchanged one) and a tensor's (what model identities and cache keys are made of)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of the file's bytes, read in 1 MiB blocks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def update_with_tensor(digest, tensor: torch.Tensor) -> None:
    """Feed ``digest`` (a ``hashlib`` object) a tensor's dtype name and then its bytes (on the CPU,
    contiguous, in row-major order): equal tensors of equal dtype give equal digests."""
    digest.update(str(tensor.dtype).encode())
    digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
