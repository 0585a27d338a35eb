"""A user's labelled photos: the DataModule and the reader of class folders / label tables.

Re-exports the DataModule so the old class path ``data_modules.photo_collection.PhotoCollectionDataModule``
names the same class.
"""

from data_modules.photo_collection.data_module import PhotoCollectionDataModule

__all__ = ["PhotoCollectionDataModule"]
