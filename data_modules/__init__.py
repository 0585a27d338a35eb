"""DataModules (one per data set) and the shared samplers, pair/batch datasets and episodes."""

from data_modules.cifar10 import CIFAR10DataModule
from data_modules.errors import DataError
from data_modules.landmarks import LandmarksTestDataModule
from data_modules.omniglot import OmniglotDataModule
from data_modules.photo_collection import PhotoCollectionDataModule
from data_modules.sfm import SfMPairsDataModule
from data_modules.stanford_dogs import StanfordDogsDataModule

__all__ = [
    "CIFAR10DataModule",
    "DataError",
    "LandmarksTestDataModule",
    "OmniglotDataModule",
    "PhotoCollectionDataModule",
    "SfMPairsDataModule",
    "StanfordDogsDataModule",
]
