"""``LandmarksTestDataModule``: revisited Oxford / Paris (``<root>/jpg/<name>.jpg`` +
``<root>/gnd_<set>.pkl``,
the layout of ``cbir-lightning download --dataset roxford5k``).

Its evaluation set is the queries (cropped to their ``bbx``, as revisitop and cirtorch do) followed by the
database images; item ``i < num_queries`` is query ``i``, item ``num_queries + j`` is ``imlist[j]``. Labels
are -1 (relevance comes from the ground truth, see :class:`cbir_lightning.callbacks.LandmarkMetrics`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from cbir_lightning.errors import CbirError
from data_modules.base import RetrievalDataModule
from data_modules.datasets.photo_files import LabelledPhotos
from data_modules.io.pickles import safe_load_pickle
from data_modules.landmarks.gnd import GroundTruth, load_gnd
from data_modules.transforms.photos import PhotoTransform


class LandmarksTestDataModule(RetrievalDataModule):
    """Args:
    root: folder with ``jpg/`` and ``gnd_<dataset>.pkl``.
    dataset: ``roxford5k``, ``rparis6k`` (or ``oxford5k`` / ``paris6k`` for the original ground truth).
    image_size: longer side in pixels (``keep_aspect``; 1024 in the paper's evaluation) or square side.
    crop_queries: crop queries to their bounding box (the standard protocol).
    """

    def __init__(
        self,
        root: str | Path = "data/landmarks/roxford5k",
        dataset: str = "roxford5k",
        image_size: int = 1024,
        keep_aspect: bool = True,
        crop_queries: bool = True,
        batch_size: int = 16,
        num_workers: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.transform = PhotoTransform(image_size, keep_aspect)
        self.mean, self.std = self.transform.mean, self.transform.std
        self.gnd: GroundTruth | None = None
        self.data: LabelledPhotos | None = None

    @property
    def name(self) -> str:
        return self.hparams.dataset

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        root = Path(self.hparams.root)
        path = root / f"gnd_{self.hparams.dataset}.pkl"
        gnd = load_gnd(path)
        boxes: list = [None] * gnd.num_queries
        if self.hparams.crop_queries and gnd.revisited:
            raw = safe_load_pickle(path)["gnd"]
            for i, entry in enumerate(raw):
                bbx = entry.get("bbx") if isinstance(entry, dict) else None
                if bbx is None or len(bbx) != 4:
                    raise CbirError(
                        f"{path}: gnd[{i}] has no 4-number 'bbx' (query box); use crop_queries: false"
                    )
                boxes[i] = [float(v) for v in bbx]
        names = gnd.qimlist + gnd.imlist
        paths = [root / "jpg" / f"{name}.jpg" for name in names]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise CbirError(
                f"{len(absent)} of {len(paths)} images of {gnd.name} missing under {root / 'jpg'}, "
                f"e.g. {absent[0]}; "
                f"get them with `cbir-lightning download --dataset {self.hparams.dataset} --root DIR`"
            )
        labels = torch.full((len(paths),), -1, dtype=torch.long)
        self.gnd = gnd
        self.data = LabelledPhotos(paths, labels, self.transform, boxes + [None] * len(gnd.imlist))

    def _loader(self) -> DataLoader:
        self.setup()
        batch = 1 if self.hparams.keep_aspect else self.hparams.batch_size
        return DataLoader(self.data, batch_size=batch, num_workers=self.hparams.num_workers, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
