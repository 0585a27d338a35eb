"""DataModules, one sub-package per data set (``omniglot``, ``cifar10``, ``stanford_dogs``, ``sfm``,
``landmarks``, ``photo_collection``), each with its file readers and download; shared pieces in
``sampling`` (samplers, pairs, class batches, tuples, episodes, mining), ``datasets``, ``transforms`` and
``io``. Every DataModule derives from :class:`data_modules.base.RetrievalDataModule`.
Errors a user can fix are :class:`cbir_lightning.errors.CbirError` (one line).
"""

from data_modules.base import RetrievalDataModule
from data_modules.cifar10 import CIFAR10DataModule
from data_modules.landmarks import LandmarksTestDataModule
from data_modules.omniglot import OmniglotDataModule
from data_modules.photo_collection import PhotoCollectionDataModule
from data_modules.sfm import SfMPairsDataModule
from data_modules.stanford_dogs import StanfordDogsDataModule

__all__ = [
    "CIFAR10DataModule",
    "LandmarksTestDataModule",
    "OmniglotDataModule",
    "PhotoCollectionDataModule",
    "RetrievalDataModule",
    "SfMPairsDataModule",
    "StanfordDogsDataModule",
]
