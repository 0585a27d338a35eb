"""Binary codes: sign binarisation, bit packing and Hamming ranking by popcount.

``pack_codes`` turns real codes ``[n, k]`` into ``uint8 [n, ceil(k / 8)]`` (bit = code > 0, numpy's
``packbits`` order, zero padding, which adds no distance). Distances come from XOR + a 256-entry popcount
table (``hamming_distances``, exact, chunked) or from faiss ``IndexBinaryFlat`` (``hamming_knn``, top-k;
faiss imported only then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from cbir_lightning.retrieval.faiss_knn import import_faiss

if TYPE_CHECKING:
    import faiss

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


def sign_codes(codes: torch.Tensor) -> torch.Tensor:
    """Real codes -> float +-1 codes: +1 where ``code > 0``, else -1 (the same rule as ``pack_codes``'s bits).
    For +-1 codes, ``q . d = k - 2 * hamming(q, d)``: dot-product ranking is Hamming ranking."""
    return torch.where(codes > 0, 1.0, -1.0)


def pack_codes(codes: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[n, k]`` real codes -> ``uint8 [n, ceil(k / 8)]`` packed bits (bit = code > 0)."""
    bits = np.asarray(codes.detach().cpu() if isinstance(codes, torch.Tensor) else codes) > 0
    return np.packbits(bits, axis=1)


def hamming_distances(
    queries: np.ndarray | torch.Tensor, database: np.ndarray | torch.Tensor, chunk_bytes: int = 2**26
) -> torch.Tensor:
    """Exact Hamming distances ``int32 [nq, nd]`` between packed codes (popcount of the XOR)."""
    q = torch.as_tensor(np.ascontiguousarray(queries), dtype=torch.uint8)
    d = torch.as_tensor(np.ascontiguousarray(database), dtype=torch.uint8)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"packed codes of different widths: {tuple(q.shape)} and {tuple(d.shape)}")
    out = torch.empty(len(q), len(d), dtype=torch.int32)
    step = max(1, chunk_bytes // max(1, d.numel()))
    for start in range(0, len(q), step):
        xor = torch.bitwise_xor(q[start : start + step, None, :], d[None, :, :])
        out[start : start + step] = _POPCOUNT[xor.long()].sum(-1, dtype=torch.int32)
    return out


def binary_index(database: np.ndarray) -> faiss.IndexBinaryFlat:
    """faiss exhaustive binary index over packed codes (Hamming distance by hardware popcount)."""
    index = import_faiss().IndexBinaryFlat(database.shape[1] * 8)
    index.add(np.ascontiguousarray(database, dtype=np.uint8))
    return index


def hamming_knn(
    queries: np.ndarray, database: np.ndarray | faiss.IndexBinaryFlat, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database items by Hamming distance: ``(distances int32 [nq, k], indices int64 [nq, k])``."""
    index = database if isinstance(database, import_faiss().IndexBinary) else binary_index(database)
    return index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)
