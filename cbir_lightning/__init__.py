"""cbir_lightning: Siamese metric learning and content-based image retrieval on PyTorch Lightning.

``from cbir_lightning import Embedder, Index``: the Python API (:mod:`cbir_lightning.api`), imported on
first use so that ``import cbir_lightning`` stays light.
"""

__version__ = "0.1.0"

API = ("Embedder", "Index", "Result")


def __getattr__(name: str):
    if name in API:
        from cbir_lightning import api  # on first use: `import cbir_lightning` imports no torch

        return getattr(api, name)
    raise AttributeError(f"module 'cbir_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
