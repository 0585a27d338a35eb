"""``SfMPairsDataModule``: GeM training tuples with per-epoch hard-negative mining on retrieval-SfM-120k.

Training: every epoch (see :mod:`data_modules.sampling.mining`) ``query_size`` (q, p) pairs of the ``train``
split and ``neg_num`` hard negatives each, mined from a random pool of ``pool_size`` images with the model
being trained; batches are ``TupleBatch([[q, p, n1..nk], ...])`` of ``batch_size`` tuples. The mean distance
of the mined negatives is logged as ``train/neg_distance``. Validation: the ``val`` split as a retrieval set
(every image a query against all others; relevant = same cluster), scored by the RetrievalMetrics callback.
Sizes larger than the data are reduced to it (as cirtorch does); impossible settings fail with one line.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from cbir_lightning.errors import CbirError
from data_modules.base import RetrievalDataModule
from data_modules.datasets.photo_files import LabelledPhotos, PhotoFiles
from data_modules.sampling.mining import mine_tuples
from data_modules.sampling.samplers import loader
from data_modules.sampling.tuples import TupleSampler, collate_tuples
from data_modules.sfm.files import SfMSplit, read_sfm_split, read_whitening_pairs
from data_modules.transforms.photos import PhotoTransform


class SfMPairsDataModule(RetrievalDataModule):
    """Args:
    root: folder holding ``<name>.pkl`` and ``ims/`` (the release's layout).
    name: the pickle's stem (``retrieval-SfM-120k`` or ``retrieval-SfM-30k``).
    image_size: longer side in pixels (``keep_aspect``, the paper) or the square side.
    neg_num / query_size / pool_size: negatives per tuple, tuples per epoch, mining pool size
        (paper: 5, 2000, 20000); all three are capped at what the data allows (neg_num at the number
        of other clusters, with a warning), as is batch_size at the tuples per epoch.
    batch_size: tuples per training batch (paper: 5).
    mining_batch_size: images per forward pass while mining (equal-size images are stacked).
    eval_batch_size: validation batch size (1 when ``keep_aspect``: sizes differ).
    val: validate on the ``val`` split.
    seed: seeds the per-epoch draws of pairs and pools (same seed + model -> same tuples).
    """

    def __init__(
        self,
        root: str | Path = "data/retrieval-SfM-120k",
        name: str = "retrieval-SfM-120k",
        image_size: int = 362,
        keep_aspect: bool = True,
        neg_num: int = 5,
        query_size: int = 2000,
        pool_size: int = 20000,
        batch_size: int = 5,
        mining_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 4,
        val: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for key in ("image_size", "query_size", "batch_size", "mining_batch_size", "eval_batch_size"):
            if int(getattr(self.hparams, key)) < 1:
                raise CbirError(f"data.init_args.{key} must be >= 1, got {getattr(self.hparams, key)}")
        if neg_num < 0:
            raise CbirError(f"data.init_args.neg_num must be >= 0, got {neg_num}")
        if pool_size < neg_num:
            raise CbirError(
                f"data.init_args.pool_size ({pool_size}) is smaller than neg_num ({neg_num}): "
                "the mining pool "
                "must hold at least neg_num images; raise pool_size or lower neg_num"
            )
        self.transform = PhotoTransform(image_size, keep_aspect)
        self.mean, self.std = self.transform.mean, self.transform.std
        self.train_split: SfMSplit | None = None
        self.val_split: SfMSplit | None = None
        self.last_neg_distance = float("nan")
        self.neg_num = neg_num  # capped at the number of other clusters by setup()

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        """The tensor the validation loader gives for ``image`` (resize, ImageNet normalisation)."""
        return self.transform(image)

    def preprocess_spec(self) -> dict:
        """``eval_transform`` as data: the photo transform's resize and ImageNet normalisation."""
        return self.transform.preprocess_spec()

    def setup(self, stage: str | None = None) -> None:
        if self.train_split is not None:
            return
        hp = self.hparams
        self.train_split = read_sfm_split(hp.root, "train", hp.name)
        self.val_split = read_sfm_split(hp.root, "val", hp.name) if hp.val else None
        split = self.train_split
        if not len(split.qidxs):
            raise CbirError(f"{Path(hp.root) / hp.name}.pkl: the 'train' split has no qidxs/pidxs pairs")
        others = len(torch.unique(split.clusters)) - 1
        if hp.neg_num > 0 and others == 0:
            raise CbirError(
                f"the 'train' split of {hp.root} has a single cluster, so no negatives exist; add clusters "
                "or set data.init_args.neg_num 0"
            )
        self.neg_num = min(hp.neg_num, others)
        if self.neg_num < hp.neg_num:
            rank_zero_warn(
                f"neg_num={hp.neg_num} but the 'train' split has only {others} clusters besides a query's: "
                f"mining {self.neg_num} negatives per tuple"
            )

    @property
    def num_tuples(self) -> int:
        assert self.train_split is not None
        return min(self.hparams.query_size, len(self.train_split.qidxs))

    def mine(self, model: torch.nn.Module, epoch: int) -> torch.Tensor:
        """This epoch's tuples ``[num_tuples, 2 + neg_num]`` (train-split image indices), mined with
        ``model``."""
        hp, split = self.hparams, self.train_split
        assert split is not None, "call setup() first"
        result = mine_tuples(
            model,
            PhotoFiles(split.paths, self.transform),
            split.clusters,
            split.qidxs,
            split.pidxs,
            query_size=hp.query_size,
            pool_size=hp.pool_size,
            neg_num=self.neg_num,
            seed=hp.seed,
            epoch=epoch,
            batch_size=hp.mining_batch_size,
            num_workers=hp.num_workers,
        )
        self.last_neg_distance = result.neg_distance
        return result.tuples

    def _mine_for_trainer(self, sampler_epoch: int) -> torch.Tensor:
        trainer = self.trainer
        if trainer is None:
            raise CbirError("SfMPairsDataModule mines with the model being trained: attach it to a Trainer")
        # the trainer's epoch: the sampler's is not yet set when Lightning starts the first iterator
        epoch = trainer.current_epoch
        tuples = self.mine(trainer.lightning_module, epoch)
        if trainer.is_global_zero and self.neg_num > 0:
            for logger in trainer.loggers:
                logger.log_metrics({"train/neg_distance": self.last_neg_distance}, step=trainer.global_step)
        return tuples

    def train_dataloader(self) -> DataLoader:
        assert self.train_split is not None, "call setup() first"
        sampler = TupleSampler(self.num_tuples, self._mine_for_trainer)
        if len(sampler) == 0:
            raise CbirError(
                f"{self.num_tuples} tuples per epoch cannot be split over {sampler.num_replicas} processes; "
                "raise data.init_args.query_size or add (q, p) pairs"
            )
        batch_size = min(self.hparams.batch_size, len(sampler))
        if batch_size < self.hparams.batch_size:
            rank_zero_warn(f"only {len(sampler)} tuples per epoch per process: batch_size {batch_size}")
        return self._loader(
            PhotoFiles(self.train_split.paths, self.transform),
            sampler,
            batch_size,
            collate_tuples,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_split is None:
            raise CbirError("validation needs data.init_args.val: true (the pickle's 'val' split)")
        split = self.val_split
        data = LabelledPhotos(split.paths, split.clusters, self.transform)
        return self._loader(data, None, 1 if self.hparams.keep_aspect else self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def whitening_data(self) -> tuple[Dataset, torch.Tensor]:
        """Images (eval transform) and matching pairs ``[P, 2]`` for learned whitening: the release's
        ``<name>-whiten.pkl`` if present (as cirtorch), else the training split's (qidxs, pidxs)."""
        hp = self.hparams
        release = read_whitening_pairs(hp.root, hp.name)
        if release is not None:
            paths, pairs = release
            labels = torch.full((len(paths),), -1, dtype=torch.long)
            return LabelledPhotos(paths, labels, self.transform), pairs
        self.setup("fit")
        split = self.train_split
        used, inverse = torch.unique(torch.cat([split.qidxs, split.pidxs]), return_inverse=True)
        pairs = inverse.view(2, -1).T.contiguous()
        paths = [split.paths[int(i)] for i in used]
        return LabelledPhotos(paths, split.clusters[used], self.transform), pairs

    def _loader(self, data, sampler, batch_size: int, collate_fn=None, drop_last: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        return loader(data, sampler, batch_size, workers, collate_fn=collate_fn, drop_last=drop_last)
