"""``LandmarksTestDataModule``: revisited Oxford / Paris (``<root>/jpg/<name>.jpg`` +
``<root>/gnd_<set>.pkl``,
the layout of ``cbir-lightning download --dataset roxford5k``).

Its evaluation set is the queries (cropped to their ``bbx``, as revisitop and cirtorch do) followed by the
database images; item ``i < num_queries`` is query ``i``, item ``num_queries + j`` is ``imlist[j]``. Labels
are -1 (relevance comes from the ground truth, see :class:`cbir_lightning.callbacks.LandmarkMetrics`).

With ``present_only`` the set is the part of the ground truth whose images are in ``images`` (see
:func:`data_modules.landmarks.gnd.restrict_gnd`), plus the photos of ``distractors`` as negatives: a
sanity check on a few photos of the set, e.g. ``../shared/data/landmarks`` (10 Oxford5k photos, 10 Sacre
Coeur photos). The original ground truth (``oxford5k``) is the one that relates these photos: the
revisited one removed its query images from its database.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from cbir_lightning.errors import CbirError
from data_modules.base import RetrievalDataModule
from data_modules.datasets.photo_files import LabelledPhotos
from data_modules.landmarks.gnd import GroundTruth, load_gnd, restrict_gnd
from data_modules.transforms.photos import PhotoTransform


class LandmarksTestDataModule(RetrievalDataModule):
    """Args:
    root: folder with ``jpg/`` and ``gnd_<dataset>.pkl``.
    dataset: ``roxford5k``, ``rparis6k`` (or ``oxford5k`` / ``paris6k`` for the original ground truth).
    image_size: longer side in pixels (``keep_aspect``; 1024 in the paper's evaluation) or square side.
    crop_queries: crop queries to their bounding box (the standard protocol; original ground truth:
        when every query has a ``bbx``).
    images: folder of the ``<name>.jpg`` photos (default ``<root>/jpg``).
    present_only: keep only the ground truth's images found in ``images`` (else a missing one stops).
    distractors: a folder whose ``*.jpg`` photos are appended to the database as negatives.
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
        images: str | Path | None = None,
        present_only: bool = False,
        distractors: str | Path | None = None,
    ) -> None:
        super().__init__()
        # named, not read from the caller's frame: built inside a callback's init_args (LandmarkMetrics),
        # jsonargparse's frames are not this constructor's
        self.save_hyperparameters(
            {
                "root": root,
                "dataset": dataset,
                "image_size": image_size,
                "keep_aspect": keep_aspect,
                "crop_queries": crop_queries,
                "batch_size": batch_size,
                "num_workers": num_workers,
                "images": images,
                "present_only": present_only,
                "distractors": distractors,
            }
        )
        self.transform = PhotoTransform(image_size, keep_aspect)
        self.mean, self.std = self.transform.mean, self.transform.std
        self.gnd: GroundTruth | None = None
        self.data: LabelledPhotos | None = None

    @property
    def name(self) -> str:
        return self.hparams.dataset

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def preprocess_spec(self) -> dict:
        """``eval_transform`` as data: the photo transform's resize and ImageNet normalisation."""
        return self.transform.preprocess_spec()

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        root = Path(self.hparams.root)
        path = root / f"gnd_{self.hparams.dataset}.pkl"
        images = Path(self.hparams.images) if self.hparams.images is not None else root / "jpg"
        gnd = load_gnd(path)
        extra = self._distractors()
        if self.hparams.present_only or extra:
            everything = set(gnd.imlist + gnd.qimlist)
            present = {p.stem for p in images.glob("*.jpg")} if self.hparams.present_only else everything
            gnd = restrict_gnd(gnd, present, list(extra))
            positives = ("easy", "hard", "ok")
            if not any(len(entry.get(key, ())) for entry in gnd.gnd for key in positives):
                raise CbirError(
                    f"{path}: no query has a positive among the {len(gnd.imlist) - len(extra)} of its "
                    f"images under {images} (the revisited sets removed their queries from the database; "
                    "for a few Oxford/Paris photos use the original gnd_oxford5k.pkl / gnd_paris6k.pkl)"
                )
        boxes: list = [None] * gnd.num_queries
        if self.hparams.crop_queries and (gnd.revisited or all(b is not None for b in gnd.boxes or [None])):
            for i, bbx in enumerate(gnd.boxes or [None] * gnd.num_queries):
                if bbx is None:
                    raise CbirError(
                        f"{path}: gnd[{i}] has no 4-number 'bbx' (query box); use crop_queries: false"
                    )
                boxes[i] = bbx
        names = gnd.qimlist + gnd.imlist
        paths = [extra.get(name, images / f"{name}.jpg") for name in names]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise CbirError(
                f"{len(absent)} of {len(paths)} images of {gnd.name} missing under {images}, "
                f"e.g. {absent[0]}; "
                f"get them with `cbir-lightning download --dataset {self.hparams.dataset} --root DIR` "
                "(or keep the ones present with present_only: true)"
            )
        labels = torch.full((len(paths),), -1, dtype=torch.long)
        self.gnd = gnd
        self.data = LabelledPhotos(paths, labels, self.transform, boxes + [None] * len(gnd.imlist))

    def _distractors(self) -> dict[str, Path]:
        """``{name: path}`` of the distractor photos (sorted by name), or ``{}``."""
        if self.hparams.distractors is None:
            return {}
        folder = Path(self.hparams.distractors)
        found = sorted(folder.glob("*.jpg"))
        if not found:
            raise CbirError(f"distractors: no *.jpg photos in {folder}; give a folder of photos or null")
        return {p.stem: p for p in found}

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
