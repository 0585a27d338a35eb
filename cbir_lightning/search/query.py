"""Querying an index: embed a query image with the index's own model, rank, re-rank, recommend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cbir_lightning.errors import CbirError
from cbir_lightning.rerank.rerank import check_reranker, rerank_scores
from cbir_lightning.retrieval.approximate import set_params
from cbir_lightning.retrieval.faiss_knn import FaissKnn
from cbir_lightning.search.files import crop_image, file_sha256, open_image, open_inside, parse_crop
from cbir_lightning.search.manifest import CURRENT, EMBEDDINGS, FAISS_INDEX, read_manifest
from cbir_lightning.search.model import SearchModel

OPEN_ATTEMPTS = 4  # reads of an index whose CURRENT moved meanwhile, before giving up
SHORTLIST = 100  # re-ranking works on the top items of the first search (Iscen et al.'s truncation)


@dataclass
class SearchIndex:
    """A loaded index: manifest, vectors ``[n, D]`` and the k-NN index over them (faiss inner product)."""

    path: Path
    manifest: dict
    embeddings: np.ndarray
    knn: FaissKnn
    version: Path  # the version folder these vectors were read from (``CURRENT`` at open time)

    @classmethod
    def open(cls, path: str | Path) -> SearchIndex:
        """The live version of the index folder ``path``. If that version vanishes while it is read (a
        writer published twice meanwhile and pruned it), ``CURRENT`` is resolved again and the read
        retried; CbirError naming the folder and the fix if it still fails."""
        for attempt in range(OPEN_ATTEMPTS):
            seen = _current_text(Path(path))
            try:
                return cls._open_version(path)
            except CbirError:
                if attempt == OPEN_ATTEMPTS - 1 or _current_text(Path(path)) == seen:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open_version(cls, path: str | Path) -> SearchIndex:
        manifest, version = read_manifest(path)
        try:
            embeddings = np.load(version / EMBEDDINGS, allow_pickle=False)
            knn = FaissKnn.load(version / FAISS_INDEX, embeddings, "dot")
            set_params(knn, manifest.get("faiss", {}).get("params", {}))  # index --approximate
        except Exception as err:
            reason = " ".join(str(err).split())[:200]
            raise CbirError(
                f"index {path} is damaged ({reason}); rebuild it with `cbir-lightning index`"
            ) from err
        if embeddings.shape != (manifest["count"], manifest["dimension"]) or knn.index.ntotal != len(
            embeddings
        ):
            raise CbirError(f"index {path} is inconsistent (vectors vs manifest); rebuild it")
        return cls(Path(path), manifest, embeddings, knn, version)

    @property
    def items(self) -> list[dict]:
        return self.manifest["items"]

    def item_path(self, i: int) -> Path:
        return Path(self.manifest["images_root"]) / self.items[i]["path"]

    def open_item(self, i: int) -> BinaryIO:
        """Item ``i``'s file opened for reading, only if it is still the file that was indexed: a regular
        file inside the indexed folder (``open_inside``: no symlink out of it is followed, even one
        swapped in while serving) with the size and modification time recorded at index time. CbirError
        (one line) otherwise; the caller closes the file."""
        item = self.items[i]
        fd = open_inside(self.manifest["images_root"], item["path"])
        found = os.fstat(fd)
        if (found.st_size, found.st_mtime_ns) != (item.get("size"), item.get("mtime_ns")):
            os.close(fd)
            raise CbirError(f"{item['path']} changed since it was indexed; re-index")
        return os.fdopen(fd, "rb")

    def load_model(self, ckpt: str | Path | None = None, onnx_model: str | Path | None = None):
        """The index's model (``ckpt`` or ``onnx_model`` overrides the recorded path), checked by
        :meth:`check_model`. An index built with an ONNX export is queried with that export (or a copy);
        one built with a checkpoint also with an export of that checkpoint and its whitening file."""
        from cbir_lightning.export.onnx_embedder import OnnxSearchModel  # ONNX Runtime (heavy): .onnx only

        recorded = self.manifest["model"]
        if recorded.get("onnx") or onnx_model is not None:
            if recorded.get("onnx") and ckpt is not None:
                raise CbirError(
                    f"index {self.path} was built with the ONNX model {recorded['checkpoint']}; query it "
                    "with --model (not --ckpt), or rebuild it with `cbir-lightning index --ckpt`"
                )
            path = Path(onnx_model or recorded["checkpoint"])
            if not path.is_file():
                raise CbirError(
                    f"ONNX model {path} of index {self.path} not found; pass the index's model with --model "
                    "or rebuild the index"
                )
            return self.check_model(OnnxSearchModel.load(path))
        ckpt = Path(ckpt or recorded["checkpoint"])
        if not ckpt.is_file():
            raise CbirError(
                f"checkpoint {ckpt} of index {self.path} not found; pass the index's checkpoint with --ckpt "
                "or rebuild the index"
            )
        return self.check_model(SearchModel.load(ckpt.resolve()))

    def check_model(self, model):
        """``model`` (a :class:`SearchModel` or an ONNX export's model) if it is the one the index was built
        with: the same checkpoint identity and whitening file, or an export of them; else CbirError."""
        recorded = self.manifest["model"]
        whitening = (model.describe_whitening() or {}).get("sha256")
        same_whitening = whitening == (self.manifest.get("whitening") or {}).get("sha256")
        onnx = model.is_onnx
        if recorded.get("onnx"):
            same = onnx and model.identity == recorded["identity"]
        elif onnx:  # a checkpoint's index: an export of that checkpoint with the same whitening file
            same = model.meta["source"]["identity"] == recorded["identity"] and same_whitening
        else:
            same = model.identity == recorded["identity"]
            if same and not same_whitening:
                raise CbirError(
                    f"the whitening beside {model.checkpoint} differs from the one index {self.path} was "
                    "built with; re-index with `cbir-lightning index`"
                )
        if not same:
            kind, option = ("ONNX model", "--model") if onnx else ("checkpoint", "--ckpt")
            raise CbirError(
                f"{kind} {model.checkpoint} is not the model index {self.path} "
                f"was built with ({recorded['checkpoint']}); query with that model or re-index with "
                f"`cbir-lightning index {option} {model.checkpoint} --out {self.path}`"
            )
        return model

    def search_vectors(
        self, query: Tensor, top_k: int, model: SearchModel | None = None, rerank: str = "none"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``top_k`` ``(scores [nq, k], rows [nq, k])`` for query vectors ``[nq, D]``."""
        check_reranker(rerank)
        query = torch.as_tensor(query, dtype=torch.float32)
        if query.ndim != 2 or query.shape[1] != self.manifest["dimension"]:
            raise CbirError(
                f"query vectors of shape {tuple(query.shape)} do not match index dimension "
                f"{self.manifest['dimension']}"
            )
        n = len(self.embeddings)
        top_k = max(1, min(top_k, n))
        if self.manifest["scoring"] == "model":
            if rerank != "none":
                raise CbirError(
                    f"--rerank {rerank} needs dot-product vectors, but the model of index {self.path} ranks "
                    "with its own learned similarity; use --rerank none"
                )
            if model is None:
                raise CbirError(f"index {self.path} scores with its model's similarity; load the model")
            scores = model.similarity(query, torch.from_numpy(self.embeddings), "model")
            values, rows = scores.topk(top_k, dim=1)
            return values.numpy(), rows.numpy()
        values, rows = self.knn.search(
            query, top_k if rerank == "none" else max(top_k, SHORTLIST), rescore=False
        )
        values, rows = values.numpy(), rows.numpy()
        if rerank == "none":
            return values, rows
        out_scores, out_rows = [], []
        for q, shortlist in zip(query.double(), rows, strict=True):
            shortlist = shortlist[shortlist >= 0]
            scores = rerank_shortlist(rerank, q, torch.from_numpy(self.embeddings[shortlist]).double())
            order = torch.sort(-scores, stable=True).indices[:top_k]
            out_scores.append(scores[order].numpy())
            out_rows.append(shortlist[order.numpy()])
        return np.stack(out_scores), np.stack(out_rows)

    def results(self, scores: np.ndarray, rows: np.ndarray) -> list[dict]:
        return [  # an approximate (IVF) index may find fewer than k: faiss pads with -1
            {"id": int(r), "path": str(self.item_path(int(r))), "score": round(float(s), 6)}
            for s, r in zip(scores, rows, strict=True)
            if r >= 0
        ]


def _current_text(index: Path) -> bytes | None:
    """The raw ``CURRENT`` pointer of an index folder (None if unreadable): changes on every publish."""
    try:
        return (index / CURRENT).read_bytes()
    except OSError:
        return None


def rerank_shortlist(name: str, query: Tensor, items: Tensor) -> Tensor:
    """Scores of the shortlist ``items [m, D]`` for one ``query [D]`` after re-ranking among them
    (:func:`~cbir_lightning.rerank.rerank.rerank_scores`; items diffusion does not reach keep their plain
    dot products, unclamped)."""
    return rerank_scores(name, query[None], items, clamp=False)[0]


def embed_query(model: SearchModel, image, crop=None) -> Tensor:
    """The query vector ``[1, D]`` of a PIL image or an image file, optionally cropped (x0,y0,x1,y1)."""
    if not isinstance(image, Image.Image):
        image = open_image(image)
    return model.embed_image(crop_image(image, parse_crop(crop)))


def search_image(
    index: SearchIndex, model: SearchModel, image, top_k: int = 10, crop=None, rerank: str = "none"
) -> list[dict]:
    scores, rows = index.search_vectors(embed_query(model, image, crop), top_k, model, rerank)
    return index.results(scores[0], rows[0])


def recommend_image(
    index: SearchIndex,
    model: SearchModel,
    image_path: str | Path,
    top_k: int = 10,
    duplicate_threshold: float = 0.98,
) -> dict:
    """Similar items without the query's exact duplicates (same file hash) and near duplicates (score at or
    above ``duplicate_threshold``)."""
    digest = file_sha256(image_path)
    vector = embed_query(model, image_path)
    n = len(index.items)
    scores, rows = index.search_vectors(vector, n if n <= 1000 else top_k + 200, model)
    exact, near, similar = [], [], []
    for s, r in zip(scores[0], rows[0], strict=True):
        if r < 0:
            continue
        item = index.results([s], [r])[0]
        if index.items[int(r)]["sha256"] == digest:
            exact.append(item)
        elif s >= duplicate_threshold:
            near.append(item)
        elif len(similar) < top_k:
            similar.append(item)
    return {"results": similar, "exact_duplicates": exact, "near_duplicates": near}
