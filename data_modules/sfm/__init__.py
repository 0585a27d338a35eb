"""retrieval-SfM-120k: the tuple-mining DataModule and the reader of the release's database pickle.

Re-exports the DataModule so the old class path ``data_modules.sfm.SfMPairsDataModule`` names the same class.
"""

from data_modules.sfm.data_module import SfMPairsDataModule

__all__ = ["SfMPairsDataModule"]
