"""The model behind an index: module, evaluation transform, optional whitening, and its identity hash."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cbir_lightning.checkpoints import Checkpoint, read_checkpoint
from cbir_lightning.contracts import RetrievalData
from cbir_lightning.digest import file_sha256
from cbir_lightning.errors import CbirError
from cbir_lightning.export.onnx_embedder import OnnxSearchModel
from cbir_lightning.inference import model_device
from cbir_lightning.model_file import ModelFile, is_model_file
from cbir_lightning.whitening import apply_whitening


def whiten(x: Tensor, whitening: dict | None) -> Tensor:
    return x if whitening is None else apply_whitening(x, whitening)


def checkpoint_identity(ckpt: str | Path) -> dict:
    """The identity hash of checkpoint ``ckpt`` (see :class:`~cbir_lightning.checkpoints.Checkpoint`)."""
    return read_checkpoint(ckpt).identity


def datamodule_from_checkpoint(ckpt: str | Path | Checkpoint):
    """The checkpoint's DataModule rebuilt from its saved arguments (it must not need its data root)."""
    checkpoint = ckpt if isinstance(ckpt, Checkpoint) else read_checkpoint(ckpt)
    ckpt, class_path = checkpoint.path, checkpoint.datamodule_args.get("_class_path")
    datamodule = checkpoint.datamodule()
    if not isinstance(datamodule, RetrievalData):
        raise CbirError(
            f"DataModule {class_path} of {ckpt} has no eval_transform(image); it cannot index images"
        )
    return datamodule


def read_model_file(model: str | Path | Checkpoint | ModelFile) -> ModelFile:
    """The model file of a model file or a Lightning checkpoint (a path, told apart by the model file's
    marker, or one already read); a checkpoint goes through ``ModelFile.from_checkpoint``, which rebuilds
    no DataModule when the checkpoint records its preprocessing."""
    if isinstance(model, (str, Path)):
        path = Path(model).resolve()
        model = ModelFile.load(path) if is_model_file(path) else read_checkpoint(path)
    if isinstance(model, Checkpoint):
        model = ModelFile.from_checkpoint(model)
    return model


def whitening_file_of(model_file: ModelFile) -> Path | None:
    """The file a model file's whitening came from (the whitening file beside the checkpoint, else the
    model file itself), or None without a whitening."""
    if model_file.whitening is None:
        return None
    wfile = model_file.provenance.get("whitening_file")
    return Path(wfile) if wfile else (model_file.path or Path("<model file>"))


def describe_whitening(whitening: dict | None, file: Path | None, sha256: str | None = None) -> dict | None:
    """``{"file", "kind", "sha256"}`` of a whitening (``sha256`` of ``file`` unless given), or None."""
    if whitening is None:
        return None
    if sha256 is None:
        sha256 = file_sha256(file)
    return {"file": str(file), "kind": str(whitening.get("kind")), "sha256": sha256}


@dataclass
class SearchModel:
    """What embedding an image needs, and how the index scores it: a model file's module, preprocessing
    and whitening (a checkpoint is converted in memory, ``ModelFile.from_checkpoint``)."""

    checkpoint: Path
    module: torch.nn.Module
    transform: object
    whitening: dict | None
    whitening_file: Path | None
    identity: dict
    is_onnx: bool = field(default=False, init=False)  # OnnxSearchModel says True
    decode_size: int | None = None  # the preprocessing's size: large JPEGs are decoded reduced to it
    whitening_sha256: str | None = None  # of the whitening file it came from (what an index records)

    @classmethod
    def load(cls, model: str | Path | Checkpoint | ModelFile) -> SearchModel:
        """The model of a model file or a checkpoint (see :func:`read_model_file`)."""
        return cls.from_model_file(read_model_file(model))

    @classmethod
    def from_model_file(cls, model_file: ModelFile) -> SearchModel:
        """The search model of a model file (its path is what an index records)."""
        path = model_file.path if model_file.path is not None else Path("<model file>")
        model = cls(
            path,
            model_file.module(),
            model_file.transform,
            model_file.whitening,
            whitening_file_of(model_file) or path,
            model_file.identity,
        )
        model.decode_size = model_file.decode_size
        model.whitening_sha256 = model_file.whitening_sha256
        return model

    def describe_whitening(self) -> dict | None:
        """The whitening applied (file, kind, SHA-256; what an index manifest records), or None."""
        return describe_whitening(self.whitening, self.whitening_file, self.whitening_sha256)

    def post_process(self, embeddings: Tensor) -> Tensor:
        """Raw module embeddings -> index vectors (whitened if a whitening file is beside the checkpoint)."""
        return whiten(embeddings.float(), self.whitening).float()

    def scoring(self, sample: Tensor) -> str:
        """``dot`` when the model's similarity is the dot product of the (whitened) vectors, so faiss
        inner-product search ranks exactly and its scores are the model's; ``model`` otherwise (scores
        from ``module.similarity``). The module's contract (``dot_product_similarity``, see
        :class:`~cbir_lightning.contracts.EmbeddingModel`) says whether it ranks as a dot product; the
        scores on ``sample`` must equal the dot products too (DSH ranks as one, but scores Hamming)."""
        if self.whitening is not None:
            return "dot"
        if not self.module.dot_product_similarity:
            return "model"
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

    @property
    def embedding_model(self) -> torch.nn.Module:
        """What :func:`~cbir_lightning.inference.embed_dataset` embeds batches with: the module (its
        ``embed``; ``post_process`` then gives the index vectors)."""
        return self.module

    def embed(self, images: Tensor) -> Tensor:
        """Preprocessed images ``[n, C, H, W]`` (on any device) -> index vectors ``[n, D]`` on the CPU: the
        module's ``embed`` on its own device, then ``post_process``."""
        with torch.no_grad():
            return self.post_process(self.module.embed(images.to(model_device(self.module))).cpu())

    def embed_image(self, image) -> Tensor:
        """One PIL image -> its index vector ``[1, D]``."""
        return self.embed(self.transform(image)[None])


def check_model_args(ckpt, onnx_model) -> None:
    """CbirError unless exactly one of a checkpoint and an ONNX model is given."""
    if (ckpt is None) == (onnx_model is None):
        raise CbirError("pass exactly one of --ckpt CKPT (a checkpoint) and --model MODEL.onnx (an export)")


def load_search_model(ckpt: str | Path | None = None, onnx_model: str | Path | None = None):
    """The model of ``index``/``search``: a checkpoint's ``SearchModel`` (``ckpt``) or an exported ONNX file's
    ``OnnxSearchModel`` (``onnx_model``), both with the same interface; exactly one must be given."""
    check_model_args(ckpt, onnx_model)
    if onnx_model is not None:
        return OnnxSearchModel.load(onnx_model)
    return SearchModel.load(ckpt)
