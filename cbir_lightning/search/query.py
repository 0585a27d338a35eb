"""Querying an index: embed a query image with the index's own model, rank, re-rank, recommend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cbir_lightning.digest import file_sha256
from cbir_lightning.errors import CbirError
from cbir_lightning.export.onnx_embedder import OnnxSearchModel
from cbir_lightning.rerank.rerank import check_reranker, rerank_scores
from cbir_lightning.retrieval.approximate import set_params
from cbir_lightning.retrieval.faiss_knn import FaissKnn
from cbir_lightning.retrieval.fusion import reciprocal_rank_fusion
from cbir_lightning.search.files import crop_image, open_image, open_indexed, parse_crop
from cbir_lightning.search.manifest import CURRENT, EMBEDDINGS, FAISS_INDEX, read_manifest
from cbir_lightning.search.model import SearchModel
from cbir_lightning.search.store import is_store_address

OPEN_ATTEMPTS = 4  # reads of an index whose CURRENT moved meanwhile, before giving up
SHORTLIST = 100  # re-ranking works on the top items of the first search (Iscen et al.'s truncation)
FUSED_CANDIDATES = 100  # items of each ranking that hybrid search fuses
# the text ranking's weight in hybrid search (the image's is 1): the best on half of the paintings (titles
# vs an ImageNet baseline), confirmed on the other half (docs/vector-store.md)
TEXT_WEIGHT = 0.5


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
        return open_indexed(self.manifest["images_root"], self.items[i])

    def load_model(self, ckpt: str | Path | None = None, onnx_model: str | Path | None = None):
        """The index's model (``ckpt`` or ``onnx_model`` overrides the recorded path): see
        :func:`load_index_model`."""
        return load_index_model(self.manifest, self.path, ckpt, onnx_model)

    def check_model(self, model):
        """``model`` if it is the one the index was built with: see :func:`check_index_model`."""
        return check_index_model(self.manifest, self.path, model)

    def __len__(self) -> int:
        return len(self.items)

    def vector_search(self, query: Tensor, top_k: int, where: str | None = None) -> list[dict]:
        """The ``top_k`` items nearest to one query vector ``[1, D]`` (dot-product indexes; ``where``: the
        folder format keeps no metadata, so a filter is refused)."""
        _no_metadata(self.path, where, "--where")
        scores, rows = self.search_vectors(query, top_k)
        return self.results(scores[0], rows[0])

    def text_search(self, text: str, top_k: int, where: str | None = None) -> list[dict]:
        """Refused: the folder format keeps no text (index into ``--store milvus:...``, ``--metadata``)."""
        _no_metadata(self.path, text, "--text")
        return []

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


def load_index_model(
    manifest: dict, where, ckpt: str | Path | None = None, onnx_model: str | Path | None = None
):
    """The index's model (``ckpt`` or ``onnx_model`` overrides the recorded path), checked by
    :func:`check_index_model`. An index built with an ONNX export is queried with that export (or a copy);
    one built with a checkpoint also with an export of that checkpoint and its whitening file."""
    recorded = manifest["model"]
    if recorded.get("onnx") or onnx_model is not None:
        if recorded.get("onnx") and ckpt is not None:
            raise CbirError(
                f"index {where} was built with the ONNX model {recorded['checkpoint']}; query it "
                "with --model (not --ckpt), or rebuild it with `cbir-lightning index --ckpt`"
            )
        path = Path(onnx_model or recorded["checkpoint"])
        if not path.is_file():
            raise CbirError(
                f"ONNX model {path} of index {where} not found; pass the index's model with --model "
                "or rebuild the index"
            )
        return check_index_model(manifest, where, OnnxSearchModel.load(path))
    ckpt = Path(ckpt or recorded["checkpoint"])
    if not ckpt.is_file():
        raise CbirError(
            f"checkpoint {ckpt} of index {where} not found; pass the index's checkpoint with --ckpt "
            "or rebuild the index"
        )
    return check_index_model(manifest, where, SearchModel.load(ckpt.resolve()))


def check_index_model(manifest: dict, where, model):
    """``model`` (a :class:`SearchModel` or an ONNX export's model) if it is the one the index was built
    with: the same checkpoint identity and whitening file, or an export of them; else CbirError."""
    recorded = manifest["model"]
    whitening = (model.describe_whitening() or {}).get("sha256")
    same_whitening = whitening == (manifest.get("whitening") or {}).get("sha256")
    onnx = model.is_onnx
    if recorded.get("onnx"):
        same = onnx and model.identity == recorded["identity"]
    elif onnx:  # a checkpoint's index: an export of that checkpoint with the same whitening file
        same = model.meta["source"]["identity"] == recorded["identity"] and same_whitening
    else:
        same = model.identity == recorded["identity"]
        if same and not same_whitening:
            raise CbirError(
                f"the whitening beside {model.checkpoint} differs from the one index {where} was "
                "built with; re-index with `cbir-lightning index`"
            )
    if not same:
        kind, option = ("ONNX model", "--model") if onnx else ("checkpoint", "--ckpt")
        raise CbirError(
            f"{kind} {model.checkpoint} is not the model index {where} "
            f"was built with ({recorded['checkpoint']}); query with that model or re-index with "
            f"`cbir-lightning index {option} {model.checkpoint} {_destination(where)}`"
        )
    return model


def _destination(where) -> str:
    """The ``index`` flag that rebuilds the index ``where``: ``--store ADDRESS`` or ``--out FOLDER``."""
    return f"--store {where}" if is_store_address(where) else f"--out {where}"


def _no_metadata(path, given, flag: str) -> None:
    if given:
        raise CbirError(
            f"{flag} needs an index with metadata: {path} is an index folder, which keeps none; index with "
            "--store milvus:PATH.db --metadata FILE.tsv"
        )


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
    above ``duplicate_threshold``, in (0, 1])."""
    if not 0 < duplicate_threshold <= 1:
        raise CbirError(f"--duplicate-threshold must be in (0, 1], got {duplicate_threshold}")
    vector = embed_query(model, image_path)  # reads and checks the image first: one line if it is not one
    digest = file_sha256(image_path)
    if not isinstance(index, SearchIndex):  # a database store: its results carry their sha256
        found = index.vector_search(vector, top_k + 200)
        same = [r["sha256"] == digest for r in found]
        return _split_duplicates(found, same, [r["score"] for r in found], top_k, duplicate_threshold)
    n = len(index.items)
    scores, rows = index.search_vectors(vector, n if n <= 1000 else top_k + 200, model)
    kept = [(s, int(r)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]  # faiss pads with -1
    found = index.results([s for s, _ in kept], [r for _, r in kept])
    same = [index.items[r]["sha256"] == digest for _, r in kept]
    return _split_duplicates(found, same, [s for s, _ in kept], top_k, duplicate_threshold)


def _split_duplicates(
    found: list[dict], same_file: list[bool], scores: list[float], top_k: int, threshold: float
) -> dict:
    """Results in order split into the query's exact duplicates (``same_file``), near duplicates (score
    at or above ``threshold``) and the first ``top_k`` others."""
    exact, near, similar = [], [], []
    for item, same, score in zip(found, same_file, scores, strict=True):
        if same:
            exact.append(item)
        elif score >= threshold:
            near.append(item)
        elif len(similar) < top_k:
            similar.append(item)
    return {"results": similar, "exact_duplicates": exact, "near_duplicates": near}


def searches_by_engine(index, where: str | None, text: str | None) -> bool:
    """Whether a query goes to the store's engine (:func:`hybrid_search`): a database store, or a filter or
    a text on any index (an index folder answers the one line that they need a store); else an index
    folder's own vector search, the one that reranks."""
    return not isinstance(index, SearchIndex) or bool(where) or bool(text)


def hybrid_search(
    store,
    vector: Tensor | None,
    text: str | None,
    top_k: int = 10,
    where: str | None = None,
    text_weight: float = TEXT_WEIGHT,
    candidates: int = FUSED_CANDIDATES,
) -> list[dict]:
    """Results of a :class:`~cbir_lightning.search.store.VectorStore` for a query vector ``[1, D]``, a text
    (BM25 over its text columns) or both, among the items satisfying ``where`` (filtered by the engine).

    Both: reciprocal rank fusion (:func:`~cbir_lightning.retrieval.fusion.reciprocal_rank_fusion`) of the
    image ranking (weight 1) and the text ranking (weight ``text_weight``), each its first
    ``max(candidates, top_k)`` items; a result's ``score`` is then its fused score."""
    text = (text or "").strip() or None  # a text of blanks is no text
    if vector is None and not text:
        raise CbirError("pass a query image (--query), a text (--text) or both")
    if text_weight < 0:
        raise CbirError(f"--text-weight must be >= 0, got {text_weight}")
    if vector is None:
        return store.text_search(text, top_k, where)
    if not text:
        return store.vector_search(vector, top_k, where)
    depth = max(candidates, top_k)
    by_image, by_text = store.vector_search(vector, depth, where), store.text_search(text, depth, where)
    found = {r["id"]: r for r in by_text} | {r["id"]: r for r in by_image}
    fused = reciprocal_rank_fusion(
        [[r["id"] for r in by_image], [r["id"] for r in by_text]], [1.0, text_weight]
    )
    return [{**found[i], "score": round(score, 6)} for i, score in fused[:top_k]]
