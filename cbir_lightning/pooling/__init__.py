"""Global pooling of CNN feature maps: MAC, SPoC, GeM, R-MAC (functions and layers)."""

from cbir_lightning.pooling.functional import gem, l2n, mac, rmac, rmac_regions, spoc
from cbir_lightning.pooling.layers import MAC, RMAC, GeM, SPoC, build_pooling

__all__ = ["GeM", "MAC", "RMAC", "SPoC", "build_pooling", "gem", "l2n", "mac", "rmac", "rmac_regions", "spoc"]
