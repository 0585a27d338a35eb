"""Image grids of validation queries with their top retrievals, and of one-shot tasks with the chosen
answer, and a table of embeddings for W&B's projector, logged to Weights & Biases.

Tiles show the original pixels (the DataModule's ``display_image`` undoes its normalisation), scaled to
``tile_size`` pixels (nearest neighbour when enlarging, so small images stay sharp) with a caption: the
query's label, or each result's rank, score and label (class name when the DataModule has
``class_names``). Borders: grey = query, green = right, red = wrong, blue = the missed right answer;
with a ground truth (:func:`relevance_grid`): green = positive, red = negative, orange = junk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning.loggers import WandbLogger

from cbir_lightning.metrics import episode_scores
from cbir_lightning.pixels import display_pixels

GREEN, RED, BLUE, GREY, WHITE = (25, 204, 25), (230, 25, 25), (25, 76, 230), (128, 128, 128), (255, 255, 255)
ORANGE = (245, 150, 20)
RELEVANCE = {"positive": GREEN, "negative": RED, "junk": ORANGE}
BORDER, PADDING, CAPTION_LINES = 3, 2, 2


def scaled(pixels: torch.Tensor, size: int) -> Image.Image:
    """uint8 ``[3, h, w]`` -> a ``size`` x ``size`` PIL image: the longer side scaled to ``size`` (nearest
    when enlarging, Lanczos when shrinking), centred on white."""
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    ratio = size / max(image.size)
    method = Image.Resampling.NEAREST if ratio >= 1 else Image.Resampling.LANCZOS
    w, h = max(1, round(image.width * ratio)), max(1, round(image.height * ratio))
    canvas = Image.new("RGB", (size, size), WHITE)
    canvas.paste(image.resize((w, h), method), ((size - w) // 2, (size - h) // 2))
    return canvas


def tile(
    pixels: torch.Tensor, size: int, colour: tuple[int, int, int], caption: Sequence[str]
) -> Image.Image:
    """One grid cell: the image scaled to ``size``, a ``colour`` border and up to two caption lines below."""
    font = ImageFont.load_default(size=max(10, size // 9))
    line = font.size + 2
    out = Image.new("RGB", (size + 2 * BORDER, size + 2 * BORDER + CAPTION_LINES * line + 2), WHITE)
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, size + 2 * BORDER - 1, size + 2 * BORDER - 1), fill=colour)
    out.paste(scaled(pixels, size), (BORDER, BORDER))
    for i, text in enumerate(caption[:CAPTION_LINES]):
        while len(text) > 1 and draw.textlength(text, font=font) > size + 2 * BORDER:
            text = text[:-1]
        draw.text((1, size + 2 * BORDER + 1 + i * line), text, fill=(0, 0, 0), font=font)
    return out


def assemble(tiles: list[Image.Image], columns: int) -> torch.Tensor:
    """Tiles (all the same size) in rows of ``columns`` -> uint8 ``[3, H, W]`` on white."""
    w, h = tiles[0].size
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * (w + PADDING) + PADDING, rows * (h + PADDING) + PADDING), WHITE)
    for i, cell in enumerate(tiles):
        grid.paste(cell, (PADDING + (i % columns) * (w + PADDING), PADDING + (i // columns) * (h + PADDING)))
    return torch.from_numpy(np.asarray(grid).copy()).permute(2, 0, 1)


def label_text(label: int, class_names: Sequence[str] | None) -> str:
    """The class name of ``label`` when known, else the number."""
    return str(class_names[label]) if class_names and 0 <= label < len(class_names) else str(label)


def retrieval_grid(
    pixels: dict[int, torch.Tensor],
    labels: torch.Tensor,
    queries: torch.Tensor,
    ranked: torch.Tensor,
    scores: torch.Tensor,
    class_names: Sequence[str] | None = None,
    tile_size: int = 96,
) -> torch.Tensor:
    """One row per query: the query (grey, "query"), then its ranked results (``scores[i, j]`` of
    ``ranked[i, j]``) framed by correctness and captioned "#rank: score" and the label.
    uint8 ``[3, H, W]``."""
    tiles = []
    for q, row, row_scores in zip(queries.tolist(), ranked.tolist(), scores.tolist(), strict=True):
        tiles.append(tile(pixels[q], tile_size, GREY, ("query", label_text(int(labels[q]), class_names))))
        for rank, (r, score) in enumerate(zip(row, row_scores, strict=True), start=1):
            colour = GREEN if labels[r] == labels[q] else RED
            caption = (f"#{rank}: {score:.3f}", label_text(int(labels[r]), class_names))
            tiles.append(tile(pixels[r], tile_size, colour, caption))
    return assemble(tiles, ranked.shape[1] + 1)


def relevance_grid(
    queries: Sequence[torch.Tensor],
    items: Sequence[torch.Tensor],
    ranked: torch.Tensor,
    scores: torch.Tensor,
    relevance: Sequence[Sequence[str]],
    query_names: Sequence[str] | None = None,
    item_names: Sequence[str] | None = None,
    tile_size: int = 160,
) -> torch.Tensor:
    """One row per query: the query image (grey), then its ranked database items ``ranked[i, j]``
    (``queries`` and ``items``: uint8 ``[3, h, w]`` original pixels), captioned "#rank: score" and
    ``relevance[i][j]`` (with the item's name), framed by it: ``positive`` green, ``negative`` red,
    ``junk`` orange (as a ground truth with junk lists, e.g. Oxford's, judges them). uint8 ``[3, H, W]``."""
    tiles = []
    for q, (row, row_scores) in enumerate(zip(ranked.tolist(), scores.tolist(), strict=True)):
        tiles.append(tile(queries[q], tile_size, GREY, ("query", query_names[q] if query_names else "")))
        for rank, (r, score) in enumerate(zip(row, row_scores, strict=True), start=1):
            kind = relevance[q][rank - 1]
            if kind not in RELEVANCE:
                raise ValueError(f"relevance must be one of {list(RELEVANCE)}, got {kind!r}")
            name = f"{kind} {item_names[r]}" if item_names else kind
            tiles.append(tile(items[r], tile_size, RELEVANCE[kind], (f"#{rank}: {score:.3f}", name)))
    return assemble(tiles, ranked.shape[1] + 1)


def oneshot_grid(
    pixels: dict[int, torch.Tensor],
    labels: torch.Tensor,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    class_names: Sequence[str] | None = None,
    tile_size: int = 96,
) -> torch.Tensor:
    """One row per task: the query, then its candidates captioned with their score's rank, the score and
    the label; the chosen (best-scored) one green (right) or red (wrong), the right answer blue when
    missed. uint8 ``[3, H, W]``."""
    tiles = []
    for q, row, target, row_scores in zip(
        queries.tolist(), candidates.tolist(), targets.tolist(), scores.tolist(), strict=True
    ):
        tiles.append(tile(pixels[q], tile_size, GREY, ("query", label_text(int(labels[q]), class_names))))
        order = sorted(range(len(row)), key=lambda j: -row_scores[j])
        rank_of = {j: k + 1 for k, j in enumerate(order)}
        pick = order[0]
        for j, c in enumerate(row):
            colour = (GREEN if j == target else RED) if j == pick else (BLUE if j == target else WHITE)
            caption = (f"#{rank_of[j]}: {row_scores[j]:.3f}", label_text(int(labels[c]), class_names))
            tiles.append(tile(pixels[c], tile_size, colour, caption))
    return assemble(tiles, candidates.shape[1] + 1)


def embedding_rows(
    pixels: dict[int, torch.Tensor],
    items: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str] | None = None,
    image_size: int = 64,
) -> list[list]:
    """Rows ``[image, label, embedding]`` of W&B's embedding table for the evaluation ``items``: the
    image a ``wandb.Image`` at most ``image_size`` px, the label as text, the embedding a list of floats
    (the column W&B's projector reads)."""
    import wandb  # heavy import: only when a WandbLogger logs the table

    rows = []
    for i in items.tolist():
        image = Image.fromarray(pixels[i].permute(1, 2, 0).numpy())
        image.thumbnail((image_size, image_size), Image.Resampling.LANCZOS)
        rows.append(
            [wandb.Image(image), label_text(int(labels[i]), class_names), embeddings[i].float().tolist()]
        )
    return rows


def spread(count: int, total: int) -> torch.Tensor:
    """``min(count, total)`` indices evenly spread over ``range(total)`` (no random draws)."""
    return torch.linspace(0, total - 1, min(count, total)).long()


def log_example_grids(
    trainer: pl.Trainer,
    pl_module,
    data: dict,
    episodes,
    prefix: str,
    count: int,
    tile_size: int = 96,
    table_rows: int = 0,
) -> None:
    """Draw ``count`` retrieval queries (top 5) and ``count`` one-shot tasks, and (``table_rows`` > 0) an
    embedding table of that many evaluation items; log them to W&B (nothing without a WandbLogger)."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    dataloaders = trainer.val_dataloaders if prefix == "val" else trainer.test_dataloaders
    dataset = getattr(dataloaders, "dataset", None)
    if not loggers or dataset is None:
        return
    dm = trainer.datamodule  # a RetrievalData, or None when fit is given bare dataloaders
    display: Callable[[torch.Tensor], torch.Tensor] = dm.display_image if dm is not None else display_pixels
    class_names = dm.class_names if dm is not None else None
    embeddings, labels = data["embeddings"], data["labels"]
    queries = spread(count, len(labels))
    with torch.no_grad():
        scores = pl_module.similarity(embeddings[queries], embeddings)
        scores[torch.arange(len(queries)), queries] = -torch.inf
        ranked = torch.argsort(-scores, dim=1, stable=True)[:, :5]
        top_scores = scores.gather(1, ranked).float().cpu()
    needed = set(queries.tolist()) | set(ranked.flatten().tolist())
    if episodes is not None:
        task = torch.arange(min(count, len(episodes.queries)))
        needed |= set(episodes.queries[task].tolist()) | set(episodes.candidates[task].flatten().tolist())
    table_items = spread(table_rows, len(labels)) if table_rows > 0 else torch.zeros(0, dtype=torch.long)
    needed |= set(table_items.tolist())
    pixels = {i: display(dataset[i][0]) for i in sorted(needed)}
    grids = {
        f"{prefix}/retrievals": retrieval_grid(
            pixels, labels, queries, ranked, top_scores, class_names, tile_size
        )
    }
    if episodes is not None:
        with torch.no_grad():
            task_scores = (
                episode_scores(
                    embeddings, episodes.queries[task], episodes.candidates[task], pl_module.similarity
                )
                .float()
                .cpu()
            )
        grids[f"{prefix}/oneshot_tasks"] = oneshot_grid(
            pixels,
            labels,
            episodes.queries[task],
            episodes.candidates[task],
            episodes.targets[task, 0],
            task_scores,
            class_names,
            tile_size,
        )
    rows = embedding_rows(pixels, table_items, embeddings, labels, class_names) if len(table_items) else None
    for logger in loggers:
        for key, grid in grids.items():
            logger.log_image(key=key, images=[grid.permute(1, 2, 0).numpy()], step=trainer.global_step)
        if rows is not None:
            logger.log_table(
                key=f"{prefix}/embeddings",
                columns=["image", "label", "embedding"],
                data=rows,
                step=trainer.global_step,
            )
