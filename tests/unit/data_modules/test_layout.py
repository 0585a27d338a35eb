"""The data_modules layout: old class paths still name the same DataModules, every DataModule implements
the RetrievalData contract, one user-error type, and a non-editable install finds every sub-package."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from helpers.paths import REPO
from torch.utils.data import DataLoader

import data_modules
from cbir_lightning.callbacks import RetrievalMetrics
from cbir_lightning.checkpoints import datamodule_class
from cbir_lightning.contracts import RetrievalData
from cbir_lightning.errors import CbirError
from cbir_lightning.whitening.fit import datamodule_whitening_data
from data_modules.base import RetrievalDataModule
from data_modules.datasets.indexed_images import IndexedImages

# new home of each shipped DataModule: sub-package -> class name
SHIPPED = {
    "omniglot": "OmniglotDataModule",
    "cifar10": "CIFAR10DataModule",
    "stanford_dogs": "StanfordDogsDataModule",
    "sfm": "SfMPairsDataModule",
    "landmarks": "LandmarksTestDataModule",
    "photo_collection": "PhotoCollectionDataModule",
}
# every class path a config, a checkpoint (``_class_path``) or a saved config.yaml may hold
OLD_CLASS_PATHS = {
    **{
        f"data_modules.{name}": f"data_modules.{package}.data_module.{name}"
        for package, name in SHIPPED.items()
    },
    **{
        f"data_modules.{package}.{name}": f"data_modules.{package}.data_module.{name}"
        for package, name in SHIPPED.items()
    },
    **{path: path for path in ["data_modules.labelled_images.LabelledImagesDataModule"]},
}


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("old", sorted(OLD_CLASS_PATHS))
def test_old_class_paths_name_the_new_classes(old, tmp_path):
    new = _import(OLD_CLASS_PATHS[old])
    assert _import(old) is new
    # as a checkpoint's datamodule_hyper_parameters record it
    assert datamodule_class(tmp_path / "x.ckpt", {"_class_path": old}) is new


def test_package_level_class_path_is_trusted_before_data_modules_is_imported(tmp_path):
    """``data_modules.OmniglotDataModule`` (what configs and checkpoints record) names the package itself;
    a fresh process that has imported only the checkpoint loader must still trust and import it."""
    code = (
        "import sys; from cbir_lightning.checkpoints import datamodule_class; "
        "assert 'data_modules' not in sys.modules; "
        f"print(datamodule_class({str(tmp_path / 'x.ckpt')!r}, "
        "{'_class_path': 'data_modules.OmniglotDataModule'}).__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "data_modules.omniglot.data_module"


def test_errors_module_does_not_import_data_modules():
    code = "import sys, cbir_lightning.errors; assert 'data_modules' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", sorted(SHIPPED.values()))
def test_every_datamodule_implements_retrieval_data(name, tmp_path):
    cls = getattr(data_modules, name)
    assert issubclass(cls, RetrievalDataModule)
    assert isinstance(cls, RetrievalData)
    module = cls(root=str(tmp_path))  # building reads nothing; setup reads the files
    assert isinstance(module, RetrievalData)
    assert module.episodes is None and module.retrieval_split is None  # nothing is set up yet


def test_base_defaults_and_abstract_eval_transform():
    with pytest.raises(TypeError, match="eval_transform"):
        RetrievalDataModule()
    module = _NoEpisodes()
    assert module.episodes is None and module.retrieval_split is None and module.whitening_data() is None
    with pytest.raises(CbirError, match=r"^_NoEpisodes has no whitening_data\(\); whitening needs"):
        datamodule_whitening_data(module)


class _NoEpisodes(RetrievalDataModule):
    """The smallest RetrievalDataModule: 12 evaluation images of 3 classes, no episodes, no split."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (12, 1, 4, 4), dtype=torch.uint8, generator=gen)
        self.labels = torch.arange(12) % 3

    def eval_transform(self, image):
        raise NotImplementedError

    def val_dataloader(self) -> DataLoader:
        return DataLoader(IndexedImages(self.images, self.labels), batch_size=5)


class _Flatten(pl.LightningModule):
    def validation_step(self, batch, batch_idx):
        images, labels, indices = batch
        return {"embeddings": images.flatten(1), "labels": labels, "indices": indices}

    def similarity(self, queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
        return queries @ database.T


@pytest.mark.parametrize("with_datamodule", [True, False])
def test_retrieval_metrics_without_episodes(with_datamodule):
    callback = RetrievalMetrics(ks=(1,), log_examples=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    dm = _NoEpisodes()
    if with_datamodule:
        trainer.validate(_Flatten(), datamodule=dm, verbose=False)
    else:  # bare dataloaders: trainer.datamodule is None
        trainer.validate(_Flatten(), dataloaders=dm.val_dataloader(), verbose=False)
    assert "val/mAP" in callback.last_metrics
    assert not any("way" in key for key in callback.last_metrics)


def test_package_discovery_finds_every_sub_package():
    from setuptools import find_packages

    pyproject = (REPO / "pyproject.toml").read_text()
    find = re.search(r"\[tool\.setuptools\.packages\.find\]\ninclude = (\[.*\])", pyproject)
    found = set(find_packages(REPO, include=ast.literal_eval(find.group(1))))
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "data_modules").rglob("__init__.py")
    }
    assert len(on_disk) > 5 and on_disk <= found
