"""Stanford Dogs: the DataModule, the release's list and box files, and its download.

Re-exports the DataModule so the old class path ``data_modules.stanford_dogs.StanfordDogsDataModule`` names
the same class.
"""

from data_modules.stanford_dogs.data_module import StanfordDogsDataModule

__all__ = ["StanfordDogsDataModule"]
