"""The old module path of :class:`~cbir_lightning.models.koch_net.KochSiameseNet` (saved configs and
checkpoints name ``cbir_lightning.models.koch.KochSiameseNet``)."""

from cbir_lightning.models.koch_net import KochSiameseNet

__all__ = ["KochSiameseNet"]
