"""Learned (Lw) and PCA whitening: fit, apply, save beside a checkpoint, load."""

from cbir_lightning.whitening.functional import apply_whitening, learn_lw, learn_pca
from cbir_lightning.whitening.io import load_whitening, save_whitening, whitening_path

__all__ = ["apply_whitening", "learn_lw", "learn_pca", "load_whitening", "save_whitening", "whitening_path"]
