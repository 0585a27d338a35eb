"""DataModules (one per data set) and the shared samplers, pair/batch datasets and episodes."""

from data_modules.errors import DataError
from data_modules.omniglot import OmniglotDataModule

__all__ = ["DataError", "OmniglotDataModule"]
