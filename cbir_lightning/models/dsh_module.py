"""``DSHModule``: Deep Supervised Hashing (Liu et al., CVPR 2016) as a LightningModule.

Training: relaxed k-bit codes from :class:`~cbir_lightning.models.dsh_net.DSHNet` and the DSH loss
(:mod:`cbir_lightning.losses.dsh`) on every pair of a class batch ``(images, labels)``, or on aligned pairs
``(x1, x2, same)``. Evaluation: ``embed`` gives the binary codes as +-1 floats (sign of the relaxed code),
and ``similarity`` is minus their Hamming distance, computed by popcount on bit-packed codes
(:mod:`cbir_lightning.retrieval.hamming`); the shared retrieval metrics then give Hamming-ranking mAP.
Because ``q . d = k - 2 * hamming`` for +-1 codes, any dot-product search over the embeddings (``evaluate``,
a faiss index) ranks exactly as Hamming distance does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters

from cbir_lightning.losses.dsh import dsh_all_pairs_loss, dsh_pair_loss
from cbir_lightning.models.dsh_net import DSHNet
from cbir_lightning.models.embedding_module import EmbeddingModule
from cbir_lightning.retrieval.hamming import hamming_distances, pack_codes, sign_codes


class DSHModule(EmbeddingModule):
    """Args:
    bits: code length k.
    in_channels / input_size / channels / hidden / batch_norm: the net (see :class:`DSHNet`).
    margin: the loss margin m (default ``2 * bits``, the paper's); alpha: weight of the +-1 regulariser.
    optimizer / lr_scheduler: factories, as in :class:`~cbir_lightning.models.SiameseModule`.
    """

    def __init__(
        self,
        bits: int = 12,
        in_channels: int = 3,
        input_size: int = 32,
        channels: Sequence[int] = (32, 32, 64),
        hidden: int = 500,
        batch_norm: bool = True,
        margin: float | None = None,
        alpha: float = 0.01,
        optimizer: OptimizerCallable = lambda params: torch.optim.Adam(params, lr=1e-3),
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        from_config = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=[] if from_config else ["optimizer", "lr_scheduler"])
        self.net = DSHNet(bits, in_channels, input_size, channels, hidden, batch_norm)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """Relaxed (real-valued) codes ``[n, bits]``."""
        return self.net(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Binary codes as +-1 floats ``[n, bits]``."""
        return sign_codes(self.codes(images))

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        """Minus the Hamming distance ``[nq, nd]`` between the sign codes (popcount on packed bits)."""
        distances = hamming_distances(pack_codes(queries), pack_codes(database))
        return distances.neg().float().to(queries.device)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        if len(batch) == 3:
            x1, x2, same = batch
            loss = dsh_pair_loss(self.codes(x1), self.codes(x2), same, hp.margin, hp.alpha)
            size = len(same)
        else:
            images, labels = batch
            loss = dsh_all_pairs_loss(self.codes(images), labels, hp.margin, hp.alpha)
            size = len(labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss
