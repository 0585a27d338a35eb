"""Search on a synthetic index: re-ranking inside search, and a decompression-bomb query refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cbir_lightning.errors import CbirError
from cbir_lightning.rerank import rerank_scores
from cbir_lightning.retrieval.faiss_knn import FaissKnn
from cbir_lightning.search.files import open_image
from cbir_lightning.search.query import SearchIndex


def synthetic_index(tmp_path: Path, n: int = 60, d: int = 8) -> SearchIndex:
    g = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(4, d, generator=g), dim=1)
    x = F.normalize(centres[torch.arange(n) % 4] + 0.6 * torch.randn(n, d, generator=g), dim=1)
    index = FaissKnn(x, "dot")
    items = [{"path": f"{i}.jpg", "size": 1, "mtime_ns": 1, "sha256": str(i)} for i in range(n)]
    manifest = {"items": items, "images_root": str(tmp_path), "scoring": "dot", "dimension": d, "count": n}
    return SearchIndex(tmp_path, manifest, x.numpy(), index, tmp_path)


@pytest.mark.parametrize("rerank", ["none", "aqe", "dba", "diffusion"])
def test_rerank_in_search_equals_reranking_the_whole_database(tmp_path, rerank):
    index = synthetic_index(tmp_path)  # 60 items: the 100-item shortlist is the whole database
    g = torch.Generator().manual_seed(2)
    queries = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    scores, rows = index.search_vectors(queries, 10, rerank=rerank)
    expected = rerank_scores(rerank, queries, torch.from_numpy(index.embeddings), graph_k=50)
    for q in range(3):
        order = torch.sort(-expected[q], stable=True).indices[:10].numpy()
        assert np.array_equal(rows[q], order)
        assert np.allclose(scores[q], expected[q][order].numpy(), atol=1e-5)


def test_decompression_bomb_query_is_refused(tmp_path):
    Image.new("1", (10_000, 9_000)).save(tmp_path / "bomb.png")  # 90 Mpx > Pillow's 89.5 Mpx limit
    with pytest.raises(CbirError, match="bomb.png: image too large"):
        open_image(tmp_path / "bomb.png")
    Image.new("1", (100, 90)).save(tmp_path / "small.png")
    assert open_image(tmp_path / "small.png").size == (100, 90)
    with pytest.raises(CbirError, match="small.png: image too large"):
        open_image(tmp_path / "small.png", max_pixels=8999)
