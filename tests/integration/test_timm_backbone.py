"""A Lightning fit of a GeM head on a frozen pretrained timm backbone keeps its BatchNorm statistics."""

from __future__ import annotations

import torch

from cbir_lightning.contracts import ClassBatch


def test_frozen_backbone_keeps_its_batchnorm_statistics_through_a_lightning_fit(lite0):
    """Lightning never calls ``train()`` on the module (it keeps each submodule's mode), so the frozen
    backbone must already be in eval mode: running statistics stay as loaded."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from cbir_lightning.models import GeMSiameseModule

    module = GeMSiameseModule(
        backbone="efficientnet_lite0", weights="imagenet", whitening=1280, whitening_init="identity",
        freeze="backbone", optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1),
    )
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    batches = [ClassBatch(torch.rand(4, 3, 32, 32) * 3, torch.tensor([0, 0, 1, 1])) for _ in range(2)]
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    assert all(torch.equal(v, module.backbone.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(module.whiten.weight, torch.eye(1280))  # the head did train
