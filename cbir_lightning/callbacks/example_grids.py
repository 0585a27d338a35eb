"""Image grids of validation queries with their top retrievals, and of one-shot tasks with the chosen
answer, logged to Weights & Biases (green border = correct, red = wrong, blue = the right answer)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

GREEN, RED, BLUE, GREY = (0.1, 0.8, 0.1), (0.9, 0.1, 0.1), (0.1, 0.3, 0.9), (0.5, 0.5, 0.5)


def framed(image: torch.Tensor, colour: tuple[float, float, float], width: int = 2) -> torch.Tensor:
    """``[c, h, w]`` float image in [0, 1] -> RGB ``[3, h + 2w, w + 2w]`` with a coloured border.
    One-channel images hold ink as 1 and are shown dark on white."""
    rgb = (1 - image).expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    out = (
        torch.tensor(colour)
        .view(3, 1, 1)
        .expand(3, rgb.shape[1] + 2 * width, rgb.shape[2] + 2 * width)
        .clone()
    )
    out[:, width:-width, width:-width] = rgb
    return out


def retrieval_grid(
    images: list[torch.Tensor], labels: torch.Tensor, queries: torch.Tensor, ranked: torch.Tensor
) -> torch.Tensor:
    """One row per query: the query (grey), then its ranked results framed by correctness."""
    tiles = []
    for q, row in zip(queries.tolist(), ranked.tolist(), strict=True):
        tiles.append(framed(images[q], GREY))
        tiles += [framed(images[r], GREEN if labels[r] == labels[q] else RED) for r in row]
    return make_grid(torch.stack(tiles), nrow=ranked.shape[1] + 1, padding=2, pad_value=1.0)


def oneshot_grid(
    images: list[torch.Tensor],
    queries: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    chosen: torch.Tensor,
) -> torch.Tensor:
    """One row per task: the query, then its candidates; the chosen one green (right) or red (wrong),
    and the right answer blue when missed."""
    tiles = []
    for q, row, target, pick in zip(
        queries.tolist(), candidates.tolist(), targets.tolist(), chosen.tolist(), strict=True
    ):
        tiles.append(framed(images[q], GREY))
        for j, c in enumerate(row):
            colour = (
                (GREEN if j == target else RED) if j == pick else (BLUE if j == target else (1.0, 1.0, 1.0))
            )
            tiles.append(framed(images[c], colour))
    return make_grid(torch.stack(tiles), nrow=candidates.shape[1] + 1, padding=2, pad_value=1.0)


def log_example_grids(trainer: pl.Trainer, pl_module, data: dict, episodes, prefix: str, count: int) -> None:
    """Draw ``count`` retrieval queries (top 5) and ``count`` one-shot tasks; log them to W&B."""
    from pytorch_lightning.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    dataloaders = trainer.val_dataloaders if prefix == "val" else trainer.test_dataloaders
    dataset = getattr(dataloaders, "dataset", None)
    if not loggers or dataset is None:
        return
    embeddings, labels = data["embeddings"], data["labels"]
    queries = torch.linspace(0, len(labels) - 1, min(count, len(labels))).long()
    with torch.no_grad():
        scores = pl_module.similarity(embeddings[queries], embeddings)
        scores[torch.arange(len(queries)), queries] = -torch.inf
        ranked = torch.argsort(-scores, dim=1, stable=True)[:, :5]
    needed = set(queries.tolist()) | set(ranked.flatten().tolist())
    grids = {f"{prefix}/retrievals": None, f"{prefix}/oneshot_tasks": None}
    if episodes is not None:
        task = torch.arange(min(count, len(episodes.queries)))
        needed |= set(episodes.queries[task].tolist()) | set(episodes.candidates[task].flatten().tolist())
    images = {i: dataset[i][0] for i in needed}
    lookup = [images.get(i) for i in range(max(needed) + 1)]
    grids[f"{prefix}/retrievals"] = retrieval_grid(lookup, labels, queries, ranked)
    if episodes is not None:
        from cbir_lightning.metrics import episode_scores

        with torch.no_grad():
            chosen = episode_scores(
                embeddings, episodes.queries[task], episodes.candidates[task], pl_module.similarity
            ).argmax(1)
        grids[f"{prefix}/oneshot_tasks"] = oneshot_grid(
            lookup, episodes.queries[task], episodes.candidates[task], episodes.targets[task, 0], chosen
        )
    for logger in loggers:
        for key, grid in grids.items():
            if grid is not None:
                pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                logger.log_image(key=key, images=[pixels], step=trainer.global_step)
