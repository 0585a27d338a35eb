from cbir_lightning.models.dsh_module import DSHModule
from cbir_lightning.models.gem_module import GeMSiameseModule
from cbir_lightning.models.koch import KochSiameseNet
from cbir_lightning.models.siamese_module import SiameseModule

__all__ = ["DSHModule", "GeMSiameseModule", "KochSiameseNet", "SiameseModule"]
