"""The model behind an index: module, evaluation transform, optional whitening, and its identity hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cbir_lightning.checkpoints import check_checkpoint, load_module
from cbir_lightning.contracts import RetrievalData
from cbir_lightning.errors import CbirError
from cbir_lightning.whitening import apply_whitening, load_whitening, whitening_path


def whiten(x: Tensor, whitening: dict | None) -> Tensor:
    return x if whitening is None else apply_whitening(x, whitening)


def _hash_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_identity(ckpt: str | Path) -> dict:
    """``{"hparams": sha256 of the module's hyperparameters, "weights": sha256 of the state dict}``."""
    data = torch.load(check_checkpoint(ckpt), map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for key in sorted(data.get("state_dict", {})):
        tensor = data["state_dict"][key]
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"hparams": _hash_json(data.get("hyper_parameters", {})), "weights": digest.hexdigest()}


def datamodule_from_checkpoint(ckpt: str | Path):
    """The checkpoint's DataModule rebuilt from its saved arguments (it must not need its data root)."""
    import pytorch_lightning as pl
    from jsonargparse import ArgumentParser

    from cbir_lightning.checkpoints import checkpoint_datamodule_args

    args = checkpoint_datamodule_args(ckpt)
    class_path = args.get("_class_path")
    if not class_path:
        raise CbirError(
            f"checkpoint {ckpt} records no DataModule, so its image transform is unknown; "
            "use a checkpoint written by `cbir-lightning fit`"
        )
    init = {k: v for k, v in args.items() if not k.startswith("_")}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
    try:
        parsed = parser.parse_object({"data": {"class_path": class_path, "init_args": init}})
        datamodule = parser.instantiate_classes(parsed).data
    except Exception as err:
        reason = " ".join(str(err).split())[:300]
        raise CbirError(f"checkpoint {ckpt}: cannot rebuild its DataModule {class_path} ({reason})") from err
    if not isinstance(datamodule, RetrievalData):
        raise CbirError(
            f"DataModule {class_path} of {ckpt} has no eval_transform(image); it cannot index images"
        )
    return datamodule


@dataclass
class SearchModel:
    """What embedding an image needs, and how the index scores it."""

    checkpoint: Path
    module: torch.nn.Module
    transform: object
    whitening: dict | None
    whitening_file: Path | None
    identity: dict

    @classmethod
    def load(cls, ckpt: str | Path) -> SearchModel:
        ckpt = Path(ckpt).resolve()
        module = load_module(ckpt)
        transform = datamodule_from_checkpoint(ckpt).eval_transform
        wfile = whitening_path(ckpt)
        whitening = load_whitening(wfile) if wfile.is_file() else None
        return cls(
            ckpt, module, transform, whitening, wfile if whitening else None, checkpoint_identity(ckpt)
        )

    def describe_whitening(self) -> dict | None:
        if self.whitening is None:
            return None
        from cbir_lightning.search.files import file_sha256

        return {
            "file": str(self.whitening_file),
            "kind": str(self.whitening.get("kind")),
            "sha256": file_sha256(self.whitening_file),
        }

    def post_process(self, embeddings: Tensor) -> Tensor:
        """Raw module embeddings -> index vectors (whitened if a whitening file is beside the checkpoint)."""
        return whiten(embeddings.float(), self.whitening).float()

    def scoring(self, sample: Tensor) -> str:
        """``dot`` when the model's similarity is the dot product of the (whitened) vectors, so faiss
        inner-product search ranks exactly; ``model`` otherwise (scores from ``module.similarity``)."""
        if self.whitening is not None:
            return "dot"
        with torch.no_grad():
            own = self.module.similarity(sample, sample).double()
        return (
            "dot"
            if torch.allclose(own, sample.double() @ sample.double().T, atol=1e-4, rtol=1e-4)
            else "model"
        )

    def similarity(self, queries: Tensor, database: Tensor, scoring: str) -> Tensor:
        if scoring == "dot":
            return queries.double() @ database.double().T
        with torch.no_grad():
            return self.module.similarity(queries.float(), database.float()).double()

    def embed_image(self, image) -> Tensor:
        """One PIL image -> its index vector ``[1, D]``."""
        with torch.no_grad():
            return self.post_process(self.module.embed(self.transform(image)[None]))


def check_model_args(ckpt, onnx_model) -> None:
    """CbirError unless exactly one of a checkpoint and an ONNX model is given."""
    if (ckpt is None) == (onnx_model is None):
        raise CbirError("pass exactly one of --ckpt CKPT (a checkpoint) and --model MODEL.onnx (an export)")


def load_search_model(ckpt: str | Path | None = None, onnx_model: str | Path | None = None):
    """The model of ``index``/``search``: a checkpoint's ``SearchModel`` (``ckpt``) or an exported ONNX file's
    ``OnnxSearchModel`` (``onnx_model``), both with the same interface; exactly one must be given."""
    check_model_args(ckpt, onnx_model)
    if onnx_model is not None:
        from cbir_lightning.export.onnx_embedder import OnnxSearchModel

        return OnnxSearchModel.load(onnx_model)
    return SearchModel.load(ckpt)
