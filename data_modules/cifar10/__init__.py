"""CIFAR-10: the DataModule and the reader of torchvision's ``cifar-10-batches-py`` files.

Re-exports the DataModule so the old class path ``data_modules.cifar10.CIFAR10DataModule`` names the
same class.
"""

from data_modules.cifar10.data_module import CIFAR10DataModule

__all__ = ["CIFAR10DataModule"]
