"""``AtomicCheckpointIO``: every checkpoint a run writes is complete under its final name, or absent.

Lightning's own writer stages a checkpoint in the system's temporary folder and moves it into place; when
that folder is on another file system the move is a copy, and a full disk leaves a truncated file under the
final name (``best-epoch=01.ckpt`` that no longer loads). This writer puts it in a temporary file in the
target folder, fsyncs it and renames it over the final name (:func:`cbir_lightning.atomic.atomic_file`);
a failed write removes the temporary file and stops the run with one line (CbirError) naming the file.
``cbir-lightning`` gives it to every trainer it builds.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from cbir_lightning.atomic import atomic_file
from cbir_lightning.errors import CbirError
from cbir_lightning.model_file import FORMAT, ModelFile


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO (reading and removing as Lightning does) whose writes are atomic in the target
    folder; a local path only. A model file is read as the checkpoint it holds
    (:meth:`~cbir_lightning.model_file.ModelFile.lightning_checkpoint`), so ``validate``/``test``/
    ``predict`` take ``--ckpt_path X.model``."""

    def load_checkpoint(self, path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(path, *args, **kwargs)
        if isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT:
            return ModelFile.from_dict(checkpoint, Path(path)).lightning_checkpoint()
        return checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path, buffer = Path(path), io.BytesIO()
        torch.save(checkpoint, buffer)  # serialised first: a failed write is then a plain OSError
        try:
            with atomic_file(path) as tmp:
                tmp.write_bytes(buffer.getbuffer())
        except OSError as err:
            raise CbirError(
                f"cannot write the checkpoint {path} ({err.strerror or err}); free space on that disk or "
                "pass another --trainer.default_root_dir (checkpoints written before are complete)"
            ) from err
