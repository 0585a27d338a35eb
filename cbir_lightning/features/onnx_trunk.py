"""A frozen trunk run by ONNX Runtime: the same function as the PyTorch module, several times faster on a CPU
(MobileNetV2 at 224 px: see docs/experiments/training-that-pays.md), which is what filling a feature cache
spends its time on.

:func:`onnx_trunk` exports the module once (in memory, dynamic batch), checks ONNX Runtime's output against
PyTorch's on the example batch, and returns a callable ``images -> features``; None when the export or the
check fails (the caller keeps PyTorch), so a trunk ONNX cannot express never changes what is stored.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

TOLERANCE = 1e-3  # largest |ONNX Runtime - PyTorch| accepted, relative to the largest |PyTorch| output


class OnnxTrunk:
    """``images [n, C, H, W] -> features`` through an ONNX Runtime session (CPU)."""

    def __init__(self, session) -> None:
        self.session = session

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"images": x})[0])


def onnx_trunk(trunk: nn.Module, example: torch.Tensor, threads: int | None = None) -> OnnxTrunk | None:
    """``trunk`` (eval mode) as an :class:`OnnxTrunk` checked on ``example``, or None if it cannot be."""
    import onnxruntime as ort  # heavy import: only when a cache runs its trunk in ONNX Runtime

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                trunk.eval(),
                (example,),
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        engine = OnnxTrunk(session)
        with torch.no_grad():
            reference = trunk(example).float()
        worst = float((engine(example) - reference).abs().max())
    except Exception:  # an operator ONNX cannot express, an ONNX Runtime failure: PyTorch it is
        return None
    return engine if worst <= TOLERANCE * max(1.0, float(reference.abs().max())) else None
