"""``export_onnx``: a model file's (or a checkpoint's) evaluation embedder as an ONNX file that needs
neither the model file nor Lightning.

The graph maps images ``[batch, C, H, W]`` (preprocessed as the metadata's ``preprocess`` spec says, see
:mod:`cbir_lightning.export.preprocess`) to the index vectors the model gives in ``cbir-lightning index``:
the module's eval-mode ``embed`` (GeM: its multi-scale combination at ``eval_scales``, pooling and
whitening layer), then the model file's whitening when it has one (a checkpoint's: the whitening file
beside it). DSH models output their relaxed codes (before the sign); the metadata says ``"post": "sign"``
and the embedder applies it. The batch axis is dynamic; so are height and width when the preprocessing
keeps the aspect ratio (photos). The preprocessing is the model file's spec (as data): no DataModule.

The metadata (``metadata_props`` key ``cbir_lightning``, JSON) records: the preprocessing spec, input
size, channels, dimension, ``post``, ``scoring`` (``{"kind": "dot"}``, ``{"kind": "weighted_l1", "weight",
"bias"}`` for the Koch net's learned L1 head, or ``{"kind": "hamming", "bits"}`` for DSH codes), the
whitening applied, and the source model file or checkpoint with its identity hash.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from cbir_lightning.atomic import file_target
from cbir_lightning.contracts import WeightedL1Net
from cbir_lightning.errors import CbirError
from cbir_lightning.export.onnx_embedder import FORMAT, METADATA_KEY
from cbir_lightning.export.preprocess import preprocess
from cbir_lightning.models.dsh_module import DSHModule
from cbir_lightning.models.gem_module import GeMSiameseModule
from cbir_lightning.models.siamese_module import SiameseModule
from cbir_lightning.search.model import describe_whitening, read_model_file, whitening_file_of

PARITY_TOLERANCE = 1e-4  # max abs difference of the exported vectors to the checkpoint's


class ExportedEmbedder(nn.Module):
    """``images -> index vectors`` of a loaded module (eval mode), with the whitening file folded in;
    ``codes=True``: the DSH module's relaxed codes (before the sign)."""

    def __init__(self, module: nn.Module, whitening: dict | None, codes: bool = False) -> None:
        super().__init__()
        self.module, self.codes = module, codes
        self.whitening = whitening is not None
        if whitening is not None:
            self.register_buffer("mean", whitening["mean"].float().clone())
            self.register_buffer("projection", whitening["projection"].float().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.codes:
            return self.module.codes(images)
        x = self.module.embed(images)
        if self.whitening:
            x = nn.functional.normalize((x.float() - self.mean) @ self.projection.T, dim=1)
        return x


def is_dsh(module: nn.Module) -> bool:
    return isinstance(module, DSHModule)


def scoring_of(module: nn.Module, vectors: torch.Tensor, whitened: bool) -> dict:
    """How the index scores ``vectors`` (the module's index vectors, ``[n, D]``), as metadata: ``dot`` when
    the module's similarity is their dot product (its contract's ``dot_product_similarity`` says it ranks
    as one, and the scores agree) or they are whitened, ``hamming`` for DSH codes, ``weighted_l1`` (head
    weight and bias) for a ``SiameseModule`` around a weighted-L1 net (``WeightedL1Net``: the Koch net, an
    ensemble of them); checked against ``module.similarity``. CbirError for any other learned similarity."""
    with torch.no_grad():
        if whitened:
            return {"kind": "dot"}
        own = module.similarity(vectors, vectors).double()
        v = vectors.double()
        if module.dot_product_similarity and torch.allclose(own, v @ v.T, atol=1e-4, rtol=1e-4):
            return {"kind": "dot"}
        if is_dsh(module):
            bits = int(vectors.shape[1])
            if torch.allclose(own, (v @ v.T - bits) / 2, atol=1e-6):
                return {"kind": "hamming", "bits": bits}
        if isinstance(module, SiameseModule) and isinstance(module.net, WeightedL1Net):
            weight, bias = module.net.l1_head()
            weight, bias = weight.detach().double(), float(bias)
            ours = (v[:, None, :] - v[None, :, :]).abs() @ weight + bias
            if torch.allclose(own, ours, atol=1e-4, rtol=1e-4):
                return {"kind": "weighted_l1", "weight": weight.tolist(), "bias": bias}
    raise CbirError(
        f"the similarity of {type(module).__name__} is neither a dot product nor a known head (Koch L1, DSH "
        "Hamming); it cannot be exported for search"
    )


def eval_scales(module: nn.Module) -> list[float]:
    """The image scales of the module's eval ``embed``: a GeM module's ``eval_scales``, else ``[1.0]``."""
    return [float(s) for s in (module.eval_scales if isinstance(module, GeMSiameseModule) else [1.0])]


def _input_shape(spec: dict) -> tuple[int, int, int]:
    channels = 1 if spec["mode"] == "L" else 3
    return channels, int(spec["size"]), int(spec["size"])


def parity(onnx_path: Path, embedder: nn.Module, inputs: list[torch.Tensor]) -> float:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch outputs of ``embedder`` on ``inputs``."""
    import onnxruntime as ort  # ONNX Runtime (heavy): the parity check only

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ours = session.run(None, {"images": x.numpy()})[0]
            worst = max(worst, float((torch.from_numpy(ours) - embedder(x).float()).abs().max()))
    return worst


def export_graph(
    embedder: nn.Module, example: torch.Tensor, path: Path, opset: int = 17, dynamic_spatial: bool = False
) -> None:
    """Write ``embedder`` (eval mode, left in eval mode) as ONNX: input ``images`` with a dynamic batch axis
    (and dynamic height and width if ``dynamic_spatial``), output ``embeddings``."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_spatial else {0: "batch"}
    embedder.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            embedder,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": axes, "embeddings": {0: "batch"}},
        )
    embedder.eval()  # the exporter restores the mode it found; keep evaluation mode for the checks


def export_onnx(model, out: str | Path, opset: int = 17, samples: list | None = None) -> dict:
    """Write the ONNX embedder of ``model`` to ``out`` and check it.

    ``model``: a model file (``best.model``, ``cbir-lightning convert``) or a Lightning checkpoint (a path,
    told apart by the model file's marker; converted in memory by ``ModelFile.from_checkpoint``), or a
    :class:`~cbir_lightning.model_file.ModelFile`. The preprocessing and the whitening are the model
    file's: no DataModule is rebuilt (but for a checkpoint that does not record its preprocessing).

    Guarantees: ONNX Runtime's outputs equal PyTorch's to ``PARITY_TOLERANCE`` on random inputs (batches of
    1 and 3, a second image size when the spatial axes are dynamic) and on ``samples`` (PIL images,
    preprocessed), else CbirError and no file is left at ``out``. Returns ``{"onnx", "input_size",
    "channels", "dimension", "scoring", "max_abs_diff", ...}``.
    """
    import onnx  # the ONNX exporter's dependency, only when exporting

    out = file_target(out)
    if out.suffix != ".onnx":
        raise CbirError(f"--out {out} must end in .onnx")
    if not out.parent.is_dir():
        raise CbirError(f"folder {out.parent} of --out does not exist; create it or pass another --out")
    model_file = read_model_file(model)
    source = model_file.path or Path("<model file>")
    module = model_file.module()
    spec = model_file.preprocess
    whitening = model_file.whitening
    wfile = whitening_file_of(model_file)
    codes = is_dsh(module)
    embedder = ExportedEmbedder(module, whitening, codes).eval()
    channels, height, width = _input_shape(spec)
    dynamic_spatial = spec["resize"] == "fit"
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, channels, height, width, generator=generator)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        try:
            export_graph(embedder, example, tmp, opset, dynamic_spatial)
        except (RuntimeError, ValueError) as err:  # e.g. an opset the exporter or an operator lacks
            reason = " ".join(str(err).split())[:200]
            raise CbirError(f"ONNX export at --opset {opset} failed ({reason}); try the default, 17") from err
        with torch.no_grad():
            vectors = embedder(torch.rand(16, channels, height, width, generator=generator)).float()
        index_vectors = torch.where(vectors > 0, 1.0, -1.0) if codes else vectors
        scoring = scoring_of(module, index_vectors, whitening is not None)
        inputs = [torch.rand(b, channels, height, width, generator=generator) for b in (1, 3)]
        if dynamic_spatial:
            inputs.append(torch.rand(2, channels, max(height * 3 // 4, 8), width, generator=generator))
        inputs += [preprocess(image, spec)[None] for image in samples or []]
        max_abs_diff = parity(tmp, embedder, inputs)
        if not max_abs_diff <= PARITY_TOLERANCE:
            raise CbirError(
                f"the ONNX export of {source} differs from PyTorch by {max_abs_diff:.3g} "
                f"(> {PARITY_TOLERANCE}); try another --opset (got {opset})"
            )
        metadata = {
            "format": FORMAT,
            "preprocess": spec,
            "input_size": None if dynamic_spatial else [height, width],
            "max_side": height if dynamic_spatial else None,
            "channels": channels,
            "dimension": int(vectors.shape[1]),
            "post": "sign" if codes else "none",
            "scoring": scoring,
            "eval_scales": eval_scales(module),
            "whitening": describe_whitening(whitening, wfile, model_file.whitening_sha256),
            "source": {
                "checkpoint": str(source),
                "identity": model_file.identity,
                "module": f"{type(module).__module__}.{type(module).__name__}",
            },
            "max_abs_diff": max_abs_diff,
        }
        model = onnx.load(str(tmp))
        props = {
            METADATA_KEY: json.dumps(metadata),
            "input_size": json.dumps(metadata["input_size"]),
            "normalization": json.dumps({"mean": spec["mean"], "std": spec["std"], "mode": spec["mode"]}),
        }
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.producer_name = "cbir_lightning"
        onnx.save(model, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "onnx": str(out),
        "checkpoint": str(source),
        "input_size": metadata["input_size"] or f"aspect kept, longer side {height}",
        "channels": channels,
        "dimension": metadata["dimension"],
        "scoring": scoring["kind"],
        "whitening": whitening is not None,
        "post": metadata["post"],
        "opset": opset,
        "max_abs_diff": max_abs_diff,
    }
