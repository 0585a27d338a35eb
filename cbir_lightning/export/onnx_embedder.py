"""``OnnxSearchModel``: an ONNX file written by ``cbir-lightning export``, run by ONNX Runtime on the CPU,
with what ``index`` / ``search`` / ``recommend`` need from a model (the interface of
:class:`cbir_lightning.search.model.SearchModel`): ``transform`` (the recorded preprocessing),
``embed_image``, ``embedding_model`` (what the one embedding route,
:func:`cbir_lightning.inference.embed_dataset`, runs: this model's ``embed``), ``post_process``,
``scoring``, ``similarity``, ``identity`` (the file's SHA-256) and ``describe_whitening`` (the whitening
folded into the graph)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cbir_lightning.digest import file_sha256
from cbir_lightning.errors import CbirError
from cbir_lightning.export.preprocess import preprocess

METADATA_KEY = "cbir_lightning"  # the ONNX metadata property `export` writes (onnx_export.py)
FORMAT = 1

L1_CHUNK_ELEMENTS = 2**24  # values held at a time when scoring with the weighted L1 head


def read_metadata(path: str | Path) -> dict:
    """The ``cbir_lightning`` metadata of ONNX file ``path``; CbirError naming the file and the fix if it is
    missing, not an ONNX model, or not written by ``cbir-lightning export``."""
    import onnx  # the ONNX reader: only for .onnx files

    path = Path(path)
    if not path.is_file():
        raise CbirError(
            f"ONNX model {path} not found; write it with `cbir-lightning export --ckpt CKPT --out {path}`"
        )
    if zipfile.is_zipfile(path):
        raise CbirError(
            f"{path} is a PyTorch checkpoint, not an ONNX model; pass it as --ckpt, or export it with "
            f"`cbir-lightning export --ckpt {path} --out MODEL.onnx`"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise CbirError(
            f"{path} is not an ONNX model ({reason}); pass the file written by `cbir-lightning export`"
        ) from err
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props or not len(model.graph.node):
        raise CbirError(
            f"ONNX model {path} was not written by `cbir-lightning export` (no {METADATA_KEY!r} metadata); "
            "export the checkpoint with `cbir-lightning export`"
        )
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("preprocess"), dict):
        raise CbirError(
            f"ONNX model {path} has damaged {METADATA_KEY!r} metadata (not the object export writes); "
            "export the checkpoint again"
        )
    if meta.get("format") != FORMAT:
        raise CbirError(f"ONNX model {path} has metadata format {meta.get('format')}; export it again")
    return meta


def onnx_identity(path: str | Path) -> dict:
    """``{"onnx": sha256 of the file}``: equal for copies of the same export, different for any other."""
    return {"onnx": file_sha256(Path(path))}


def weighted_l1(queries: Tensor, database: Tensor, weight: Tensor, bias: float) -> Tensor:
    """``s[i, j] = sum_k w_k |q_ik - x_jk| + bias`` (the Koch head), chunked over ``database``."""
    chunk = max(1, L1_CHUNK_ELEMENTS // max(1, queries.shape[0] * queries.shape[1]))
    parts = [torch.abs(queries[:, None] - part[None]) @ weight for part in torch.split(database, chunk)]
    return (torch.cat(parts, 1) if parts else queries.new_zeros(len(queries), 0)) + bias


@dataclass
class OnnxSearchModel:
    """An exported embedder; ``checkpoint`` is the ONNX file (the name index manifests use)."""

    checkpoint: Path
    session: object
    meta: dict
    identity: dict
    whitening: dict | None = None
    whitening_file: Path | None = None
    is_onnx: bool = field(default=True, init=False)

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> OnnxSearchModel:
        """The model of ONNX file ``path`` on ONNX Runtime's CPU provider (``threads``: intra-op threads,
        default ONNX Runtime's)."""
        import onnxruntime as ort  # ONNX Runtime (heavy): only for .onnx files

        path = Path(path).resolve()
        meta = read_metadata(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:
            reason = " ".join(str(err).split())[:200]
            raise CbirError(f"ONNX Runtime cannot load {path} ({reason}); export it again") from err
        inputs = [i.name for i in session.get_inputs()]
        if inputs != ["images"]:
            raise CbirError(
                f"ONNX model {path} takes inputs {inputs}, not the one 'images' input export writes; export "
                "the checkpoint again"
            )
        return cls(path, session, meta, onnx_identity(path))

    def transform(self, image) -> Tensor:
        """A PIL image -> the float ``[C, H, W]`` input (the checkpoint DataModule's ``eval_transform``)."""
        return preprocess(image, self.meta["preprocess"])

    def describe_whitening(self) -> dict | None:
        """The whitening file folded into the graph at export (file, kind, SHA-256), or None."""
        return self.meta.get("whitening")

    @property
    def embedding_model(self) -> OnnxSearchModel:
        """What :func:`~cbir_lightning.inference.embed_dataset` embeds batches with: this model's ``embed``
        (the ONNX Runtime session), the one thing an export changes on the toolkit's embedding route."""
        return self

    def embed(self, images: Tensor) -> Tensor:
        """Preprocessed images ``[n, C, H, W]`` -> index vectors ``[n, D]`` (DSH: the sign of the codes)."""
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        out = torch.from_numpy(self.session.run(None, {"images": x})[0]).float()
        return torch.where(out > 0, 1.0, -1.0) if self.meta.get("post") == "sign" else out

    def post_process(self, embeddings: Tensor) -> Tensor:
        """Index vectors are the graph's output (whitening is inside it): returned as float."""
        return embeddings.float()

    def scoring(self, sample: Tensor | None = None) -> str:
        """``dot`` (faiss inner product ranks exactly) or ``model`` (scores from ``similarity``)."""
        return "dot" if self.meta["scoring"]["kind"] == "dot" else "model"

    def similarity(self, queries: Tensor, database: Tensor, scoring: str) -> Tensor:
        """Scores ``[nq, nd]`` as the checkpoint's ``similarity`` gives them, in float64."""
        kind = self.meta["scoring"]["kind"]
        if scoring == "dot" or kind == "dot":
            return queries.double() @ database.double().T
        if kind == "hamming":
            return ((queries.double() @ database.double().T) - self.meta["scoring"]["bits"]) / 2
        weight = torch.tensor(self.meta["scoring"]["weight"], dtype=torch.float32)
        return weighted_l1(queries.float(), database.float(), weight, self.meta["scoring"]["bias"]).double()

    def embed_image(self, image) -> Tensor:
        """One PIL image -> its index vector ``[1, D]``."""
        return self.embed(self.transform(image)[None])
