"""The toolkit's contracts, written down: what a model, a DataModule, a loss and a batch provide.

Every consumer (callbacks, ``evaluate``, ``oneshot``, ``index``, mining, whitening) relies on these and
nothing else; none probes an object with ``hasattr``. A new model family implements
:class:`EmbeddingModel`, a new data set :class:`RetrievalData` (every member; an absent capability
returns ``None``), a new loss one of the loss signatures.

Batches are named tuples, so a training step dispatches on the batch's type, not its length; PyTorch's
default collate keeps a named tuple's type (a dataset returning :class:`PairBatch` items gives a
:class:`PairBatch` of stacked tensors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL import Image
    from torch.utils.data import DataLoader, Dataset


# ---- batches ------------------------------------------------------------------------------------
class PairBatch(NamedTuple):
    """Aligned pairs: ``first[i]`` and ``second[i]`` show the same class iff ``same[i] == 1``."""

    first: torch.Tensor
    second: torch.Tensor
    same: torch.Tensor


class ClassBatch(NamedTuple):
    """A class batch (P classes x K images): ``images [B, C, H, W]``, ``labels [B]``."""

    images: torch.Tensor
    labels: torch.Tensor


class TupleBatch(NamedTuple):
    """Training tuples ``[q, p, n_1..n_k]`` of ``[C, h, w]`` images (sizes may differ between tuples)."""

    tuples: list[list[torch.Tensor]]


class EvalBatch(NamedTuple):
    """Evaluation items: ``images``, their ``labels`` and their ``indices`` in the evaluation set."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


class FeatureBatch(NamedTuple):
    """A class batch of cached trunk outputs (see :mod:`cbir_lightning.features`): ``features [B, ...]``
    (feature maps or pooled vectors of the frozen part of a model), ``labels [B]``."""

    features: torch.Tensor
    labels: torch.Tensor


class FeatureEvalBatch(NamedTuple):
    """Evaluation items as cached trunk outputs: ``features``, ``labels`` and ``indices`` in the set."""

    features: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


TrainingBatch = PairBatch | ClassBatch | TupleBatch | FeatureBatch


# ---- models -------------------------------------------------------------------------------------
@runtime_checkable
class EmbeddingModel(Protocol):
    """What every model family provides to evaluation, search and export.

    ``embed`` maps images ``[N, C, H, W]`` to embeddings ``[N, D]`` (in eval mode: the retrieval
    descriptor, e.g. multi-scale and whitened). ``similarity`` scores ``[nq, nd]``, higher = more
    similar. ``dot_product_similarity`` says whether ``similarity(q, d) == q @ d.T`` ranks exactly as
    ``similarity`` does, so an inner-product index (faiss) can search the embeddings. ``descriptor``:
    what hard-negative mining compares (GeM: single scale, no post-hoc whitening; else ``embed``).
    ``post_whitening``: the attached post-hoc whitening (GeM's ``.whitening.pt``) or None.
    ``EmbeddingModule`` gives the defaults.
    """

    dot_product_similarity: bool
    post_whitening: dict | None

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...

    def descriptor(self, images: torch.Tensor) -> torch.Tensor: ...

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class SiameseNet(Protocol):
    """A net ``SiameseModule`` trains: ``embed`` images ``[n, c, h, w]`` -> ``[n, embedding_dim]``,
    ``similarity`` all pairs ``[nq, nd]`` and ``pair_logits`` aligned pairs ``[n]`` (higher = same class),
    on ``input_size`` square images (e.g. ``KochSiameseNet``, ``EnsembleNet``)."""

    input_size: int
    embedding_dim: int

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor: ...

    def pair_logits(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class WeightedL1Net(Protocol):
    """A Siamese net whose score is a weighted L1 distance, ``s(q, x) = sum_k w_k |q_k - x_k| + b``:
    ``l1_head()`` gives ``(w [d], b [])``, what an exported index scores with."""

    def l1_head(self) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class FrozenTrunkNet(Protocol):
    """A net that may be a frozen trunk followed by trainable layers: ``trunk()`` (images -> features, or
    None when nothing is frozen) and ``from_trunk(features)`` (the rest of the forward pass), e.g.
    ``GeMNet`` and ``PretrainedHashNet`` with a frozen backbone."""

    def trunk(self) -> torch.nn.Module | None: ...

    def from_trunk(self, features: torch.Tensor) -> torch.Tensor: ...

    def unfreeze(self, mode: bool = True) -> None: ...


@runtime_checkable
class FrozenTrunkModel(Protocol):
    """A model whose first part may be frozen, so its outputs can be computed once and cached:
    ``frozen_trunk()`` is that part (images -> features, eval mode, no trainable parameter) or None when
    nothing is frozen; ``embed_features(features)`` finishes the embedding (``embed(images) ==
    embed_features(frozen_trunk()(images))`` in eval mode, single scale); ``unfreeze()`` makes the frozen
    part train too (the second stage of a two-stage fine-tuning, ``cbir_lightning.callbacks.Unfreeze``)."""

    def frozen_trunk(self) -> torch.nn.Module | None: ...

    def embed_features(self, features: torch.Tensor) -> torch.Tensor: ...

    def unfreeze(self) -> None: ...


# ---- data ---------------------------------------------------------------------------------------
@runtime_checkable
class ViewSource(Protocol):
    """Items whose views a feature cache stores (:mod:`cbir_lightning.features`).

    ``labels [n]``; ``sources(i)``: what item ``i``'s views are made of, files (``Path``: hashed, so a
    changed file is computed again) or bytes (e.g. pixels held in memory); ``view(i, generator)``: the
    image tensor of the evaluation view (``generator`` None) or of the augmented view drawn from
    ``generator``; ``recipe``: a JSON-able dict of everything a view depends on besides its sources
    (size, normalisation, augmentation ranges), part of the cache key.
    """

    labels: torch.Tensor
    recipe: dict

    def __len__(self) -> int: ...

    def sources(self, i: int) -> tuple: ...

    def view(self, i: int, generator: torch.Generator | None) -> torch.Tensor: ...


@runtime_checkable
class FeatureData(Protocol):
    """A DataModule that can train and evaluate from cached features: ``view_source(split)`` gives the
    ``"train"`` or ``"eval"`` items as a :class:`ViewSource` (eval items in the order of its evaluation
    set); after ``serve_features(features)`` its loaders ask ``features.views(split, datamodule)`` for
    the cached views (``CachedViews``) and give :class:`FeatureBatch` / :class:`FeatureEvalBatch` from
    them, or images when it answers None (``serve_features(None)``: images)."""

    def view_source(self, split: str) -> ViewSource: ...

    def serve_features(self, features) -> None: ...


@runtime_checkable
class RetrievalData(Protocol):
    """What every DataModule provides besides Lightning's dataloaders.

    ``eval_transform`` turns one PIL image into the evaluation tensor (as its validation set does;
    used by ``index``, ``search`` and ``export``). ``episodes``: the N-way one-shot episodes of the
    validation set, or None. ``retrieval_split``: a bool tensor marking queries (scored against the
    rest, the database only), or None (every item against all others). ``whitening_data()``: a
    dataset of ``(image, label, index)`` items and a pair tensor for learning whitening, or None.
    ``display_image(tensor)``: one evaluation tensor -> its original pixels, uint8 RGB ``[3, H, W]``
    (the loaders' normalisation, ``mean``/``std`` or None, undone; for W&B grids). ``class_names``: the
    name of each label (``class_names[label]``), or None. ``num_classes``: how many classes the
    training batches' labels run over (``0..num_classes-1``), or None (unknown, or not set up yet).
    ``preprocess_spec()``: ``eval_transform`` as data (a dict of :mod:`cbir_lightning.export.preprocess`,
    what a model file and an ONNX export record), or None if it cannot be described.
    """

    mean: Sequence[float] | None
    std: Sequence[float] | None
    class_names: Sequence[str] | None

    @property
    def num_classes(self) -> int | None: ...

    @property
    def episodes(self): ...

    @property
    def retrieval_split(self) -> torch.Tensor | None: ...

    def eval_transform(self, image: Image.Image) -> torch.Tensor: ...

    def whitening_data(self) -> tuple[Dataset, torch.Tensor] | None: ...

    def preprocess_spec(self) -> dict | None: ...

    def display_image(self, image: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class GroundTruthData(Protocol):
    """A test set scored against ground truth instead of labels (revisited Oxford / Paris), given to the
    ``LandmarkMetrics`` callback: ``name`` (its metric keys' part), ``setup()``, ``test_dataloader()`` (its
    ``(image, label, index)`` items: the queries, then the database) and, after setup, ``gnd`` with
    ``num_queries``, ``revisited`` and per query its index arrays (``easy``/``hard``/``junk`` or
    ``ok``/``junk``) into the database."""

    gnd: object

    @property
    def name(self) -> str: ...

    def setup(self, stage: str | None = None) -> None: ...

    def test_dataloader(self) -> DataLoader: ...


# ---- losses -------------------------------------------------------------------------------------
class EmbeddingLoss(Protocol):
    """pytorch-metric-learning's signature: ``loss(embeddings [N, D], labels [N], indices_tuple)``;
    ``indices_tuple`` (optional) names the pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)`` to use.
    Every PML loss fits as it is; the toolkit's own losses (:mod:`cbir_lightning.losses`: the paper's
    contrastive loss, DSH, pair BCE, all-pairs BCE and in-batch softmax on a model's scores) take the
    same call. Modules pass every batch type alike: a class batch gives its labels and the miner's
    ``indices_tuple`` (None without a miner: the loss's own pairs); pair and tuple batches give their
    exact pairs as ``(a1, p, a2, n)``, which the toolkit's losses visit in (anchor, other) order, the
    order the batch was built in. Losses on a model's learned similarity (Koch's L1 head) take it as a
    PML distance with ``is_inverted=True`` (:class:`~cbir_lightning.losses.ModelSimilarity`)."""

    def __call__(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor: ...


@runtime_checkable
class ClassSizedLoss(Protocol):
    """A loss over ALL training classes whose parameters (e.g. one proxy per class) are sized from the
    training data: ``num_classes`` is None until ``build(num_classes, embedding_dim)`` creates them
    (a module calls it before training, from its DataModule's ``num_classes``)."""

    @property
    def num_classes(self) -> int | None: ...

    def build(self, num_classes: int, embedding_dim: int) -> None: ...


@runtime_checkable
class HashNet(Protocol):
    """A hashing net: images ``[n, c, h, w]`` -> relaxed codes ``[n, bits]``; ``param_groups()`` gives
    the optimizer's groups (e.g. a gentler learning rate for a pretrained backbone)."""

    bits: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def param_groups(self) -> list[dict]: ...


class Miner(Protocol):
    """pytorch-metric-learning's miner signature: ``miner(embeddings, labels) -> indices_tuple``."""

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple: ...
