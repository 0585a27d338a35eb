"""W&B example grids and the embedding table: original pixels (normalisation undone), readable tiles with
captions, and the table read back from an offline run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cbir_lightning.callbacks.example_grids import (
    BORDER,
    GREEN,
    GREY,
    ORANGE,
    PADDING,
    RED,
    log_example_grids,
    oneshot_grid,
    relevance_grid,
    retrieval_grid,
    tile,
)
from cbir_lightning.pixels import display_pixels
from cbir_lightning.wandb_offline import read_offline_run
from data_modules import CIFAR10DataModule
from data_modules.sampling.episodes import Episodes
from data_modules.transforms.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from data_modules.transforms.photos import PhotoTransform


def write_folders(root: Path, classes=("cat", "dog", "frog"), per_class: int = 4, size: int = 8) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    folder / f"{i}.png"
                )


@pytest.fixture
def cifar(tmp_path):
    write_folders(tmp_path / "cifar")
    dm = CIFAR10DataModule(root=tmp_path / "cifar", image_size=8)
    dm.setup("validate")
    return dm


def test_display_image_gives_the_original_pixels_of_a_normalised_item(cifar):
    dataset = cifar.val_dataloader().dataset
    image, label, index = dataset[5]
    assert image.min() < 0  # ImageNet-normalised, not [0, 1]
    original = cifar.eval_items.images[5]
    assert torch.equal(cifar.display_image(image), original)
    assert cifar.class_names == ["cat", "dog", "frog"] and cifar.class_names[int(label)] == "dog"


def test_photo_transform_is_undone_up_to_rounding():
    pixels = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    transform = PhotoTransform(30, keep_aspect=True)
    shown = display_pixels(transform(Image.fromarray(pixels)), transform.mean, transform.std)
    assert (shown.permute(1, 2, 0).int() - torch.from_numpy(pixels).int()).abs().max() <= 1


def test_display_pixels_repeats_one_channel_and_clamps():
    x = normalize(torch.rand(3, 4, 4), IMAGENET_MEAN, IMAGENET_STD)
    assert display_pixels(x).dtype == torch.uint8  # no mean/std: values clamped into [0, 1]
    gray = display_pixels(torch.full((1, 2, 2), 0.5))
    assert gray.shape == (3, 2, 2) and gray.unique().tolist() == [128]


def small_case():
    pixels = {i: torch.full((3, 8, 8), 20 * i, dtype=torch.uint8) for i in range(6)}
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return pixels, labels


def test_retrieval_grid_has_readable_tiles():
    pixels, labels = small_case()
    queries, ranked = torch.tensor([0, 2]), torch.tensor([[1, 2, 3], [3, 0, 1]])
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.4, 0.2]])
    grid = retrieval_grid(pixels, labels, queries, ranked, scores, ["cat", "dog", "frog"], tile_size=96)
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3
    assert grid.shape[1] >= 2 * 96 and grid.shape[2] >= 4 * 96  # 2 rows x (query + 3 results)


def test_tiles_are_captioned_and_enlarged():
    pixels = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    plain = np.asarray(tile(pixels, 96, (0, 0, 0), ()))
    captioned = np.asarray(tile(pixels, 96, (0, 0, 0), ("#1 0.900", "dog")))
    assert plain.shape == captioned.shape and (plain != captioned).any()
    assert (plain[: 96 + 2 * BORDER] != captioned[: 96 + 2 * BORDER]).sum() == 0  # text only below
    assert (plain[BORDER : BORDER + 96, BORDER : BORDER + 96] == 200).all()  # the image fills the tile


def test_oneshot_grid_marks_the_chosen_answer():
    pixels, labels = small_case()
    grid = oneshot_grid(
        pixels,
        labels,
        queries=torch.tensor([0]),
        candidates=torch.tensor([[2, 1, 4]]),
        targets=torch.tensor([1]),
        scores=torch.tensor([[0.1, 0.7, 0.3]]),
        tile_size=48,
    )
    assert grid.shape[1] >= 48 and grid.shape[2] >= 4 * 48


def test_offline_run_holds_grids_and_embedding_table(cifar, tmp_path, monkeypatch):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path / "runs"), project="grids")
    loader = cifar.val_dataloader()
    n = len(loader.dataset)
    embeddings = torch.nn.functional.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(0)))
    data = {"embeddings": embeddings, "labels": cifar.eval_items.labels, "indices": torch.arange(n)}
    trainer = SimpleNamespace(loggers=[logger], val_dataloaders=loader, datamodule=cifar, global_step=3)
    module = SimpleNamespace(similarity=lambda q, d: q @ d.T)
    episodes = Episodes(
        queries=torch.tensor([0, 1]),
        candidates=torch.tensor([[2, 3], [4, 5]]),
        targets=torch.tensor([[0], [1]]),
    )
    log_example_grids(trainer, module, data, episodes, "val", count=3, tile_size=64, table_rows=10)
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    wandb.teardown()  # finish() can return before wandb-core has written the run file out; teardown waits

    history = read_offline_run(run_dir)["history"]
    row = next(r for r in history if "val/embeddings/path" in r)  # the reader joins nested keys with "/"
    assert row["val/embeddings/_type"] == "table-file" and row["val/embeddings/nrows"] == 10
    table = json.loads((run_dir / "files" / row["val/embeddings/path"]).read_text())
    assert table["columns"] == ["image", "label", "embedding"]
    assert len(table["data"]) == 10
    assert {r[1] for r in table["data"]} <= {"cat", "dog", "frog"}
    assert all(len(r[2]) == 4 for r in table["data"])
    media = {p.name.split("_")[0] for p in (run_dir / "files" / "media" / "images" / "val").glob("*.png")}
    assert media == {"retrievals", "oneshot"}
    grid = Image.open(next((run_dir / "files" / "media" / "images" / "val").glob("retrievals*.png")))
    assert grid.width >= 6 * 64 and grid.height >= 3 * 64  # 3 queries x (query + top 5)


def test_omniglot_shows_ink_dark_on_white():
    from data_modules import OmniglotDataModule

    ink = torch.zeros(1, 4, 4)
    ink[0, 1, 1] = 1.0  # evaluation tensors hold ink as 1
    shown = OmniglotDataModule().display_image(ink)
    assert (
        shown.shape == (3, 4, 4)
        and shown[:, 1, 1].tolist() == [0, 0, 0]
        and shown[:, 0, 0].tolist() == [255] * 3
    )


def test_relevance_grid_frames_positive_negative_and_junk():
    grey = torch.full((3, 10, 20), 128, dtype=torch.uint8)
    ranked = torch.tensor([[2, 0, 1]])
    grid = relevance_grid(
        [grey],
        [grey, grey, grey],
        ranked,
        torch.tensor([[0.9, 0.5, 0.1]]),
        [["positive", "junk", "negative"]],
        ["q"],
        ["a", "b", "c"],
        tile_size=40,
    )
    pixels = grid.permute(1, 2, 0).numpy()
    width = 40 + 2 * BORDER + PADDING  # tile + gap; the grid starts after one gap
    corners = [tuple(pixels[PADDING, PADDING + k * width]) for k in range(4)]
    assert corners == [GREY, GREEN, ORANGE, RED]  # query, then rank 1, 2, 3 by relevance
    with pytest.raises(ValueError, match="relevance must be one of"):
        relevance_grid([grey], [grey], torch.tensor([[0]]), torch.tensor([[1.0]]), [["maybe"]])
