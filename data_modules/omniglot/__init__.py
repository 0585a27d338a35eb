"""Omniglot: the DataModule, the set reader and download, and Lake's one-shot runs (``all_runs``).

Re-exports the DataModule so the old class path ``data_modules.omniglot.OmniglotDataModule`` (configs,
checkpoints) names the same class.
"""

from data_modules.omniglot.data_module import OmniglotDataModule

__all__ = ["OmniglotDataModule"]
