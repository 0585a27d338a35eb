"""``DSHModule``: Deep Supervised Hashing (Liu et al., CVPR 2016) as a LightningModule.

Training (the shell's, :class:`~cbir_lightning.models.embedding_module.EmbeddingModule`): relaxed k-bit
codes from the net (the paper's :class:`~cbir_lightning.models.dsh_net.DSHNet` by
default, or any ``nn.Module`` mapping images to ``[n, bits]``, e.g.
:class:`~cbir_lightning.models.pretrained_hash_net.PretrainedHashNet` on an ImageNet backbone) and the DSH
loss (:class:`~cbir_lightning.losses.DSHLoss`) on every pair of a
:class:`~cbir_lightning.contracts.ClassBatch`, or on the aligned pairs of a
:class:`~cbir_lightning.contracts.PairBatch`.
Evaluation: ``embed`` gives the binary codes as +-1 floats (sign of the relaxed code), and ``similarity``
is minus their Hamming distance, computed by popcount on bit-packed codes
(:mod:`cbir_lightning.retrieval.hamming`); the shared retrieval metrics then give Hamming-ranking mAP.
Because ``q . d = k - 2 * hamming`` for +-1 codes, any dot-product search over the embeddings (``evaluate``,
a faiss index) ranks exactly as Hamming distance does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from cbir_lightning.contracts import FrozenTrunkNet, HashNet
from cbir_lightning.errors import CbirError
from cbir_lightning.losses.dsh_loss import DSHLoss
from cbir_lightning.models.dsh_net import DSHNet
from cbir_lightning.models.embedding_module import EmbeddingModule, check_objects
from cbir_lightning.retrieval.hamming import hamming_distances, pack_codes, sign_codes


class DSHModule(EmbeddingModule):
    """Args:
    net: the hashing net (``class_path`` in configs): images ``[n, c, h, w]`` -> relaxed codes
        ``[n, bits]``, with a ``bits`` attribute and ``param_groups()``, the optimizer's groups
        (:class:`~cbir_lightning.contracts.HashNet`). null: :class:`DSHNet` built from the arguments below.
    bits: code length k of the default net (12); with ``net``: unset (the net's ``bits``) or equal to it.
    in_channels / input_size / channels / hidden / batch_norm: the default net (see :class:`DSHNet`);
        ignored with ``net``.
    loss: the loss on relaxed codes (default :class:`~cbir_lightning.losses.DSHLoss` with ``margin``
        and ``alpha``).
    margin: the loss margin m (default ``2 * bits``, the paper's); alpha: weight of the +-1 regulariser
        (default 0.01); both only without ``loss`` (else set them in its init_args).
    miner: for class batches, a pytorch-metric-learning miner (``class_path``) whose pairs the loss scores;
        null: every pair.
    optimizer / lr_scheduler: factories, as in :class:`~cbir_lightning.models.SiameseModule`.
    """

    def __init__(
        self,
        bits: int | None = None,
        in_channels: int = 3,
        input_size: int = 32,
        channels: Sequence[int] = (32, 32, 64),
        hidden: int = 500,
        batch_norm: bool = True,
        margin: float | None = None,
        alpha: float | None = None,
        optimizer: OptimizerCallable = lambda params: torch.optim.Adam(params, lr=1e-3),
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
        loss: nn.Module | None = None,
        net: nn.Module | None = None,
        miner: nn.Module | None = None,
    ) -> None:
        check_objects(loss=loss, miner=miner)
        objects = [k for k, v in (("loss", loss), ("net", net), ("miner", miner)) if v is not None]
        super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, objects=objects)
        if net is None:
            net = DSHNet(12 if bits is None else bits, in_channels, input_size, channels, hidden, batch_norm)
        elif not isinstance(net, HashNet) or not isinstance(net.bits, int):
            raise CbirError(
                f"net {type(net).__name__} is not a hashing net: it needs an integer bits attribute (its "
                "code length) and param_groups() (cbir_lightning.contracts.HashNet)"
            )
        elif bits is not None and bits != net.bits:
            raise CbirError(
                f"bits is {bits} but net {type(net).__name__} gives {net.bits}-bit codes; leave bits unset "
                "and set the net's (configs: model.init_args.net.init_args.bits)"
            )
        self.net = net
        self.bits = net.bits
        if loss is not None and (margin is not None or alpha is not None):
            raise CbirError("margin and alpha apply without loss: only; set them in loss: init_args")
        self.set_losses(DSHLoss(margin, 0.01 if alpha is None else alpha) if loss is None else loss, miner)

    @property
    def input_size(self) -> int:
        return int(self.hparams.input_size)

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """Relaxed (real-valued) codes ``[n, bits]``: what the loss sees."""
        return self.net(images)

    training_embedding = codes

    def training_features(self, features: torch.Tensor) -> torch.Tensor:
        """Relaxed codes from the frozen trunk's outputs."""
        return self.net.from_trunk(features)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Binary codes as +-1 floats ``[n, bits]``."""
        return sign_codes(self.codes(images))

    def frozen_trunk(self) -> nn.Module | None:
        """The net's frozen part (``PretrainedHashNet(freeze_backbone: true)``), whose outputs a feature
        cache stores; None for a net that trains whole."""
        return self.net.trunk() if isinstance(self.net, FrozenTrunkNet) else None

    def unfreeze(self) -> None:
        """The net's frozen backbone trains from now on (two-stage fine-tuning, ``Unfreeze``)."""
        self.net.unfreeze(self.training)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Binary codes from the frozen trunk's outputs."""
        return sign_codes(self.net.from_trunk(features))

    dot_product_similarity = True  # q . d = k - 2 hamming(q, d) for +-1 codes

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        """Minus the Hamming distance ``[nq, nd]`` between the sign codes (popcount on packed bits)."""
        distances = hamming_distances(pack_codes(queries), pack_codes(database))
        return distances.neg().float().to(queries.device)

    def param_groups(self) -> list[dict]:
        """The net's ``param_groups()`` (e.g. a gentler learning rate for a pretrained backbone) plus the
        loss's trainable parameters, if any."""
        return self.with_loss_parameters([g for g in self.net.param_groups() if g["params"]])
