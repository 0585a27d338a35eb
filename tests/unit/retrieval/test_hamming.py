"""Bit packing and Hamming ranking against brute-force float Hamming distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbir_lightning.retrieval.hamming import hamming_distances, hamming_knn, pack_codes, sign_codes


def brute_hamming(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Float Hamming distance of sign codes: (k - q.d) / 2 for +-1 vectors."""
    qs, ds = sign_codes(q).double(), sign_codes(d).double()
    return (q.shape[1] - qs @ ds.T) / 2


def test_pack_codes_bit_order_and_padding():
    codes = torch.tensor([[1.0, -1, -1, -1, -1, -1, -1, 1, 1, 0, 1, -1]])
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (1, 2)
    assert packed.tolist() == [[0b10000001, 0b10100000]]  # first bit = most significant; 0 -> bit 0


@pytest.mark.parametrize("bits", [12, 24, 32, 48, 7])
def test_hamming_distances_equal_brute_force(bits):
    gen = torch.Generator().manual_seed(bits)
    q, d = torch.randn(13, bits, generator=gen), torch.randn(301, bits, generator=gen)
    got = hamming_distances(pack_codes(q), pack_codes(d), chunk_bytes=1000)  # forces several chunks
    assert got.dtype == torch.int32
    assert torch.equal(got.double(), brute_hamming(q, d))


@pytest.mark.parametrize("bits", [16, 48])
def test_faiss_hamming_knn_returns_the_smallest_distances(bits):
    gen = torch.Generator().manual_seed(1)
    q, d = torch.randn(9, bits, generator=gen), torch.randn(200, bits, generator=gen)
    distances, indices = hamming_knn(pack_codes(q), pack_codes(d), k=10)
    brute = brute_hamming(q, d)
    expected = torch.sort(brute, dim=1).values[:, :10]
    assert np.array_equal(distances, expected.numpy().astype(np.int32))
    assert torch.equal(brute.gather(1, torch.from_numpy(indices)), expected)


def test_mismatched_widths_raise():
    with pytest.raises(ValueError, match="different widths"):
        hamming_distances(np.zeros((2, 2), np.uint8), np.zeros((3, 3), np.uint8))
