"""Revisited Oxford / Paris: the test DataModule, the ``gnd_*.pkl`` ground truth and its download.

Re-exports the DataModule so the old class path ``data_modules.landmarks.LandmarksTestDataModule`` names the
same class.
"""

from data_modules.landmarks.data_module import LandmarksTestDataModule

__all__ = ["LandmarksTestDataModule"]
