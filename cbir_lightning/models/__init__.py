from cbir_lightning.models.koch import KochSiameseNet
from cbir_lightning.models.siamese_module import SiameseModule

__all__ = ["KochSiameseNet", "SiameseModule"]
