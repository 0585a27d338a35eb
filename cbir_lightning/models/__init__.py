from cbir_lightning.models.dsh_module import DSHModule
from cbir_lightning.models.dsh_net import DSHNet
from cbir_lightning.models.ensemble_net import EnsembleNet
from cbir_lightning.models.gem_module import GeMSiameseModule
from cbir_lightning.models.gem_net import GeMNet
from cbir_lightning.models.koch_net import KochSiameseNet
from cbir_lightning.models.pretrained_hash_net import PretrainedHashNet
from cbir_lightning.models.siamese_module import SiameseModule

__all__ = [
    "DSHModule",
    "DSHNet",
    "EnsembleNet",
    "GeMNet",
    "GeMSiameseModule",
    "KochSiameseNet",
    "PretrainedHashNet",
    "SiameseModule",
]
