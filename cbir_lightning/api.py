"""The Python API: ``Embedder`` (images -> vectors) and ``Index`` (build, open, search, recommend).

A thin layer over what the ``index`` / ``search`` / ``recommend`` commands run (and the commands call it):

    from cbir_lightning import Embedder, Index

    embedder = Embedder.load("model.ckpt")          # or "best.model" (a model file), "model.onnx"
    vectors = embedder.embed(["a.jpg", "b.jpg"])    # torch.Tensor [2, embedder.dim]
    index = Index.build("photos/", "photos.idx", "model.ckpt")
    hits = Index.open("photos.idx").search("a.jpg", k=5)   # [Result(rank=1, path=..., score=...), ...]

Images are file paths, PIL images, or tensors already preprocessed (``embedder.preprocess(image)``:
``[C, H, W]`` or a batch ``[N, C, H, W]``), or a list of those. Vectors are index vectors: a checkpoint's
whitening file (``CKPT.whitening.pt``) is applied, as ``cbir-lightning index`` does. Bad input raises
:class:`~cbir_lightning.errors.CbirError` with a one-line message.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor

from cbir_lightning.errors import CbirError
from cbir_lightning.export.onnx_embedder import OnnxSearchModel
from cbir_lightning.inference import embed_dataset
from cbir_lightning.model_file import is_model_file
from cbir_lightning.search.files import DEFAULT_MAX_PIXELS, open_image
from cbir_lightning.search.index import build_index
from cbir_lightning.search.milvus_store import open_index
from cbir_lightning.search.model import SearchModel
from cbir_lightning.search.query import (
    TEXT_WEIGHT,
    embed_query,
    hybrid_search,
    recommend_image,
    searches_by_engine,
)
from cbir_lightning.search.store import is_store_address
from cbir_lightning.search.store_build import build_store_index

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


def model_files(model, ckpt=None, onnx=None) -> tuple:
    """``(ckpt, onnx)`` paths of a model given as a file (a checkpoint or a model file, by suffix or the
    model file's marker; ONNX by suffix) or an Embedder; ``ckpt``/``onnx`` name the kind explicitly
    instead (both also take a model file, told apart by its marker)."""
    if model is None:
        if ckpt is None and onnx is not None and _is_model_file(onnx):  # --model best.model: as --ckpt
            return onnx, None
        return ckpt, onnx
    if ckpt is not None or onnx is not None:
        raise CbirError("pass the model once: as model=, ckpt= or onnx=")
    if isinstance(model, Embedder):
        return (None, model.path) if model.is_onnx else (model.path, None)
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        return None, path
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or _is_model_file(path):
        return path, None
    raise CbirError(
        f"model file {path} must be a checkpoint (.ckpt), a model file (`cbir-lightning convert`) or an "
        "ONNX export (.onnx, `cbir-lightning export`)"
    )


def _is_model_file(path) -> bool:
    """Whether ``path`` is a model file (by its marker); an ``.onnx`` file is not looked into."""
    if Path(path).suffix.lower() == ".onnx":
        return False
    return is_model_file(path)


class Embedder:
    """A trained model as a function from images to vectors (the vectors an index of it holds)."""

    def __init__(self, model) -> None:
        self.model = model  # a SearchModel (checkpoint) or an OnnxSearchModel (ONNX export)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Embedder:
        """The model of a checkpoint (``.ckpt``) or a model file (``cbir-lightning convert``, or
        ``best.model`` of a fit), on ``device``, or of an ONNX export (``.onnx``, CPU)."""
        ckpt, onnx = model_files(path)
        return cls.from_onnx(onnx) if onnx is not None else cls.from_checkpoint(ckpt, device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> Embedder:
        """A checkpoint of ``cbir-lightning fit`` or a model file: its module and its preprocessing
        (:class:`~cbir_lightning.model_file.ModelFile`)."""
        model = SearchModel.load(path)
        model.module.to(device)
        return cls(model)

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = None) -> Embedder:
        """An ONNX file of ``cbir-lightning export``, on ONNX Runtime (CPU, ``threads`` intra-op)."""
        return cls(OnnxSearchModel.load(path, threads))

    @property
    def path(self) -> Path:
        """The checkpoint or ONNX file."""
        return self.model.checkpoint

    @property
    def is_onnx(self) -> bool:
        return self.model.is_onnx

    def preprocess(self, image: Image.Image | str | Path) -> Tensor:
        """An image (PIL or file) -> the model's input ``[C, H, W]`` (the evaluation transform)."""
        return self.model.transform(image if isinstance(image, Image.Image) else open_image(image))

    @cached_property
    def input_shape(self) -> tuple:
        """``(C, H, W)`` of the model's input; ``(C, None, None)`` when the size follows the image."""
        wide, tall = (self.preprocess(Image.new("RGB", size)).shape for size in ((96, 64), (64, 96)))
        return tuple(wide) if wide == tall else (wide[0], None, None)

    @cached_property
    def dim(self) -> int:
        """Length of a vector."""
        return int(self.embed(Image.new("RGB", (64, 64))).shape[1])

    def embed(self, images, batch_size: int = 32) -> Tensor:
        """Images (one or a list: paths, PIL images, preprocessed ``[C, H, W]`` / ``[N, C, H, W]`` tensors)
        -> vectors ``[N, D]`` (float32, CPU), ``batch_size`` images per forward pass (grouped by size),
        through the toolkit's one embedding route (:func:`~cbir_lightning.inference.embed_dataset`) with
        the model's module or ONNX Runtime session, then its whitening."""
        items = self._items(images)
        if not items:
            return torch.zeros(0, self.dim)
        inputs = _Inputs(items, self._input)
        raw = embed_dataset(self.model.embedding_model, inputs, batch_size=batch_size, distributed=False)
        return self.model.post_process(raw.cpu())

    def _items(self, images) -> list:
        """``images`` as a list of single images (a 4-D tensor gives its rows)."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        items = []
        for image in images:
            if isinstance(image, Tensor):
                items.extend(self._check(image))
            elif isinstance(image, (str, Path, Image.Image)):
                items.append(image)
            else:
                raise CbirError(
                    f"cannot embed a {type(image).__name__}; pass image files, PIL images or tensors "
                    "from embedder.preprocess(image)"
                )
        return items

    def _check(self, images: Tensor) -> Tensor:
        """``images`` as a batch ``[N, C, H, W]`` if it is float of the model's input shape (``[C, H, W]`` or
        ``[N, C, H, W]``); CbirError otherwise."""
        c, h, w = self.input_shape
        batch = images[None] if images.ndim == 3 else images
        if (
            batch.ndim != 4
            or not batch.is_floating_point()
            or batch.shape[1] != c
            or (h is not None and tuple(batch.shape[2:]) != (h, w))
        ):
            size = f"{c}, {h or 'H'}, {w or 'W'}"
            raise CbirError(
                f"image tensor of shape {tuple(images.shape)} ({images.dtype}) is not the model's input "
                f"(float [{size}] or [N, {size}]); pass image files, PIL images or tensors from "
                "embedder.preprocess(image)"
            )
        return batch

    def _input(self, item) -> Tensor:
        return item if isinstance(item, Tensor) else self.preprocess(item)


class _Inputs(torch.utils.data.Dataset):
    """The model inputs ``[C, H, W]`` of a list of images (preprocessed when read)."""

    def __init__(self, items: list, to_input) -> None:
        self.items, self.to_input = items, to_input

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tensor:
        return self.to_input(self.items[i])


class Result(NamedTuple):
    """One hit of a search: ``rank`` 1 is the most similar; ``score`` as the model scores it (6 decimals,
    as ``cbir-lightning search`` prints it; a hybrid search's fused score); ``metadata``: the item's
    columns (an index built with ``--metadata``), else None."""

    rank: int
    path: str
    score: float
    metadata: dict | None = None


def _check_k(k: int) -> None:
    """CbirError (one line) for a number of results below 1."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise CbirError(f"--top-k must be 1 or more, got {k!r}")


def _results(found: list[dict]) -> list[Result]:
    return [Result(rank, r["path"], r["score"], r.get("metadata")) for rank, r in enumerate(found, 1)]


class Index:
    """An index written by ``cbir-lightning index`` / ``Index.build``, with its model: an index folder, or a
    database store (``"milvus:PATH.db"``, ``"milvus://HOST:PORT"``: :mod:`cbir_lightning.search.store`)."""

    def __init__(self, path: str | Path, model=None, *, ckpt=None, onnx=None) -> None:
        self.path = path if is_store_address(path) else Path(path)
        self._ckpt, self._onnx = model_files(model, ckpt, onnx)
        self._loaded = model if isinstance(model, Embedder) else None  # used as is, not read again
        self._searcher = None

    @classmethod
    def open(cls, path: str | Path, model=None, *, ckpt=None, onnx=None) -> Index:
        """The index at ``path``. Queries are embedded with the model it was built with, or ``model`` (a
        copy: a file, by suffix, or an Embedder; ``ckpt=`` / ``onnx=`` name the kind); another model is
        refused when first needed."""
        index = cls(path, model, ckpt=ckpt, onnx=onnx)
        index.searcher  # noqa: B018 (a missing or damaged index is reported here)
        return index

    @classmethod
    def build(
        cls,
        images: str | Path,
        out: str | Path,
        model=None,
        *,
        ckpt=None,
        onnx=None,
        batch_size: int = 32,
        trainer_options: dict | None = None,
        approximate: bool = False,
        target_recall: float = 0.95,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        metadata: str | Path | None = None,
        text_columns: list[str] | None = None,
    ) -> Index | None:
        """Index every jpg/png/webp below ``images`` into the folder ``out`` (as ``cbir-lightning index``:
        incremental, atomic); ``model`` as in ``open``. ``trainer_options``: the devices of a checkpoint's or
        model file's module (Lightning Fabric's ``accelerator``, ``devices``, ``strategy``, ``num_nodes``)
        and ``enable_progress_bar``. ``approximate``: a faiss HNSW / IVF index tuned to reach
        ``target_recall`` at 10 (``index --approximate``; exact below 10000 images). ``max_pixels``: larger
        images are skipped (``index --max-pixels``). ``index.report`` is the command's JSON; None in a DDP
        worker. ``out`` may be a database store (``"milvus:art.db"``): then ``metadata`` (a TSV/CSV with
        a ``path`` column) is stored with the vectors and ``text_columns`` (default: its text columns)
        are what ``search(text=...)`` ranks by."""
        ckpt, onnx = model_files(model, ckpt, onnx)
        if is_store_address(out):
            if approximate:
                raise CbirError("a database store searches exactly (FLAT); drop --approximate")
            report = build_store_index(
                ckpt, images, out, metadata, text_columns, batch_size, trainer_options, onnx, max_pixels
            )
            index = cls(out, ckpt=ckpt, onnx=onnx)
            index.report = report
            return index
        if metadata is not None or text_columns is not None:
            raise CbirError(
                "--metadata needs a database store: index with --store milvus:PATH.db (the index folder "
                "keeps no metadata)"
            )
        report = build_index(
            ckpt,
            images,
            out,
            batch_size,
            trainer_options,
            onnx_model=onnx,
            approximate=approximate,
            target_recall=target_recall,
            max_pixels=max_pixels,
        )
        if report is None:
            return None
        index = cls(out, ckpt=ckpt, onnx=onnx)
        index.report = report
        return index

    @property
    def searcher(self):
        """The loaded :class:`~cbir_lightning.search.store.VectorStore`: a
        :class:`~cbir_lightning.search.query.SearchIndex` (vectors, faiss, manifest) or a
        :class:`~cbir_lightning.search.milvus_store.MilvusStore`."""
        if self._searcher is None:
            self._searcher = open_index(self.path)
        return self._searcher

    @cached_property
    def embedder(self) -> Embedder:
        """The index's model (checked to be the one that built it)."""
        if self._loaded is not None:
            self.searcher.check_model(self._loaded.model)
            return self._loaded
        return Embedder(self.searcher.load_model(self._ckpt, self._onnx))

    def __len__(self) -> int:
        return len(self.searcher)

    @property
    def paths(self) -> list[str]:
        """The indexed files, in row order (index folders)."""
        if is_store_address(self.path):
            raise CbirError(f"{self.path} is a database store: it has no row order; search it")
        return [str(self.searcher.item_path(i)) for i in range(len(self))]

    def search(
        self,
        query=None,
        k: int = 10,
        crop=None,
        rerank: str = "none",
        *,
        where: str | None = None,
        text: str | None = None,
        text_weight: float = TEXT_WEIGHT,
    ) -> list[Result]:
        """The ``k`` most similar items to ``query``: an image (file, PIL image, preprocessed ``[C, H, W]``
        tensor) or a vector ``[D]`` / ``[1, D]``. ``crop``: ``(x0, y0, x1, y1)`` of an image in pixels;
        ``rerank``: ``none``, ``aqe``, ``dba`` or ``diffusion`` (on the first 100 results; index folders).

        A database store also takes ``where`` (a filter on the metadata columns, e.g. ``"style ==
        'Rococo' and year < 1800"``, evaluated by the engine) and ``text`` (ranked by BM25 over the text
        columns; with a ``query``, the two rankings fused by reciprocal rank fusion, the text's weighted
        ``text_weight``)."""
        _check_k(k)
        if searches_by_engine(self.searcher, where, text):
            if rerank != "none":
                raise CbirError("--rerank applies to index folders; a database store or --where/--text: none")
            vector = None if query is None else self._query_vector(query, crop)
            return _results(hybrid_search(self.searcher, vector, text, k, where, text_weight))
        vector, searcher = self._query_vector(query, crop), self.searcher
        model = self.embedder.model if searcher.manifest["scoring"] == "model" else None  # loaded if needed
        scores, rows = searcher.search_vectors(vector, k, model, rerank)
        return _results(searcher.results(scores[0], rows[0]))

    def _query_vector(self, query, crop) -> Tensor:
        """The query vector ``[1, D]`` of an image file or PIL image (cropped to ``crop``), or of a vector
        or an image tensor (no crop)."""
        if isinstance(query, (str, Path, Image.Image)):
            return embed_query(self.embedder.model, query, crop)
        if crop is not None:
            raise CbirError("crop applies to image files and PIL images; crop the image before embedding")
        return self._vector(query)

    def _vector(self, query) -> Tensor:
        """A query vector ``[1, D]`` of a vector or an image tensor; CbirError for anything else."""
        try:
            query = torch.as_tensor(query)
        except (TypeError, ValueError, RuntimeError) as err:
            raise CbirError(
                f"cannot search by a {type(query).__name__}; pass an image file, a PIL image, a preprocessed "
                "image tensor or a vector"
            ) from err
        if query.ndim >= 3:
            query = self.embedder.embed(query)
        query = query.reshape(1, -1) if query.ndim == 1 else query
        if len(query) != 1:
            raise CbirError(f"search takes one query, got {len(query)}; search each in turn")
        return query

    def recommend(self, image: str | Path, k: int = 10, duplicate_threshold: float = 0.98) -> dict:
        """Items similar to the image file ``image``: ``{"results": [Result], "exact_duplicates": [Result]
        (same file hash), "near_duplicates": [Result] (score >= duplicate_threshold)}``."""
        _check_k(k)
        found = recommend_image(self.searcher, self.embedder.model, image, k, duplicate_threshold)
        return {key: _results(items) for key, items in found.items()}
