"""The toolkit's commands on checkpoints and data sets (``oneshot``, ``ensemble``, ``make-runs``,
``download``; jsonargparse: ``--help`` on each, values from flags or a config). They use the data sets
(``data_modules``); the search-side commands (``cli/search_commands.py``) never import them."""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt

from cbir_lightning.ensemble_checkpoint import pack_ensemble
from cbir_lightning.errors import CbirError
from cbir_lightning.inference import embed_dataset
from cbir_lightning.model_file import module_checkpoint
from cbir_lightning.models.siamese_module import SiameseModule
from data_modules.landmarks.download import REVISITED, download_revisited
from data_modules.omniglot.download import download_omniglot
from data_modules.omniglot.files import SMALL_SETS
from data_modules.omniglot.oneshot_runs import (
    build_runs_from_omniglot,
    evaluate_oneshot_runs,
    load_oneshot_runs,
)
from data_modules.stanford_dogs.download import download_stanford_dogs
from data_modules.transforms.images import resize_uint8


def oneshot(
    ckpt: str | list[str],
    runs: str,
    image_size: PositiveInt | None = None,
    batch_size: PositiveInt = 256,
    test_time_scales: list[PositiveFloat] | None = None,
) -> dict:
    """N-way one-shot accuracy of a checkpoint or an ensemble on Lake's runs (all_runs).

    Prints JSON (accuracy, per_run).

    Args:
        ckpt: checkpoint or model file written by ``cbir-lightning fit`` (``best.model``); a list
            (``--ckpt '[a.ckpt, b.model]'``) scores the ensemble: each test image goes to the training
            image with the highest mean score, ``mean_m similarity_m(test, training)`` (e.g. the same
            recipe trained with several seeds).
        runs: folder or .zip of ``runNN/`` folders (Lake's ``all_runs`` layout).
        image_size: side the images are resized to; default: each net's input size.
        batch_size: images embedded at a time.
        test_time_scales: score with these test-time zooms instead of the checkpoint's own
            (``SiameseModule``'s ``test_time_scales``, e.g. ``[1.0, 0.9, 1.1]``; ``[1.0]``: none).
    """
    paths = [ckpt] if isinstance(ckpt, str) else list(ckpt)
    if not paths:
        raise CbirError("oneshot needs at least one checkpoint: --ckpt FILE or --ckpt '[A, B]'")
    checkpoints = [module_checkpoint(path) for path in paths]
    zooms = None if test_time_scales is None else {"test_time_scales": list(test_time_scales)}
    for ckpt in checkpoints:
        if zooms and not issubclass(ckpt.module_class, SiameseModule):
            name = ckpt.module_class.__name__
            raise CbirError(f"{ckpt.path}: test_time_scales needs a SiameseModule checkpoint, not {name}")
    modules = [ckpt.module(hparams=zooms) for ckpt in checkpoints]

    def embed(module, images: torch.Tensor) -> torch.Tensor:  # uint8 [n, C, H, W] -> [n, D]
        size = image_size or module.input_size
        images = resize_uint8(images, size) if size else images
        scaled = lambda x: module.embed(x.float() / 255)  # noqa: E731
        return embed_dataset(module, images, embed=scaled, batch_size=batch_size, distributed=False)

    def score(test: torch.Tensor, training: torch.Tensor) -> torch.Tensor:
        scores = [m.similarity(embed(m, test), embed(m, training)) for m in modules]
        return torch.stack(scores).mean(0)

    with torch.no_grad():
        result = evaluate_oneshot_runs(load_oneshot_runs(runs), score)
    return {
        "accuracy": round(result["accuracy"], 6),
        "per_run": result["per_run"],
        "checkpoint": ckpt if isinstance(ckpt, str) else paths,
    }


def ensemble(ckpt: list[str], out: str, overwrite: bool = False) -> dict:
    """Pack checkpoints or model files of one recipe (e.g. several seeds) into one ensemble checkpoint.

    Its net embeds with every member and scores with their mean score (``EnsembleNet``); ``oneshot``,
    ``validate``, ``index``, ``search`` and ``export`` take it like any checkpoint. Prints JSON (out,
    members).

    Args:
        ckpt: the members, ``--ckpt '[a.ckpt, b.model]'``: SiameseModule checkpoints or model files
            (without a whitening) with the same preprocessing and test-time zooms.
        out: the checkpoint to write (atomically).
        overwrite: replace ``out`` if it exists.
    """
    path = pack_ensemble(list(ckpt), out, overwrite=overwrite)
    return {"out": str(path), "members": [str(p) for p in ckpt]}


def make_runs(
    sources: list[str],
    out: str,
    alphabets: list[str] | None = None,
    num_runs: int = 20,
    ways: int = 20,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write Lake-format one-shot runs drawn from Omniglot images (folders or zips).

    Args:
        sources: Omniglot set folders or zips (a folder's ``*.zip`` files are read too).
        out: folder to create (written atomically).
        alphabets: alphabets to draw from; default: all.
        num_runs: number of runs.
        ways: classes per run.
        seed: random seed.
        overwrite: replace ``out`` if it exists.
    """
    path = build_runs_from_omniglot(
        sources, alphabets, out, num_runs=num_runs, ways=ways, seed=seed, overwrite=overwrite
    )
    return {"runs": str(path), "num_runs": num_runs, "ways": ways}


def download(dataset: str, root: str, sets: list[str] | None = None, images: bool = True) -> dict:
    """Fetch a data set (Omniglot, Oxford/Paris, Stanford Dogs) from its official release.

    Needs the internet.

    Args:
        dataset: ``omniglot``, ``roxford5k``, ``rparis6k`` or ``stanford_dogs``.
        root: folder to download into (``roxford5k``/``rparis6k``: ``ROOT/<dataset>/gnd_<dataset>.pkl``
            and ``ROOT/<dataset>/jpg/``; ``stanford_dogs``: ``ROOT/Images/``, ``ROOT/Annotation/``,
            ``ROOT/lists/``).
        sets: Omniglot sets (``images_background``, ``images_evaluation``, ``images_background_small1``...);
            default: the two small background sets.
        images: ``roxford5k``/``rparis6k``: also fetch the images (about 2-3 GB), not only the ground truth.
    """
    if dataset in REVISITED:
        return download_revisited(dataset, root, images=images)
    if dataset == "stanford_dogs":
        return download_stanford_dogs(root)
    if dataset != "omniglot":
        raise CbirError(
            f"unknown dataset {dataset!r}; available: omniglot, {', '.join(REVISITED)}, stanford_dogs"
        )
    download_omniglot(root, sets or list(SMALL_SETS))
    return {"dataset": dataset, "root": str(Path(root))}
