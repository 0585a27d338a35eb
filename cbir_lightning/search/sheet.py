"""Contact sheet: the query and its results as one image grid (PNG, or JPEG by suffix) with scores."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from cbir_lightning.atomic import atomic_file
from cbir_lightning.errors import CbirError
from cbir_lightning.search.files import open_image

TILE = 160


def _tile(image: Image.Image, caption: str, border: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + 18), "white")
    thumb = ImageOps.contain(image.convert("RGB"), (TILE - 8, TILE - 8))
    tile.paste(thumb, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=border, width=3)
    draw.text((4, TILE + 2), caption[:26], fill="black")
    return tile


def contact_sheet(query: Image.Image, results: list[dict], out: str | Path, columns: int = 6) -> Path:
    """Write the query (blue frame) and results (score under each) as a grid, atomically: a JPEG if ``out``
    ends in ``.jpg``/``.jpeg`` (quality 85), a PNG otherwise."""
    tiles = [_tile(query, "query", "blue")]
    for r in results:
        try:
            image = open_image(r["path"])
        except CbirError:
            image = Image.new("RGB", (TILE, TILE), "grey")
        tiles.append(_tile(image, f"{r['score']:.3f} {Path(r['path']).name}", "grey"))
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + 18)), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * TILE, (i // columns) * (TILE + 18)))
    out = Path(out)
    with atomic_file(out) as tmp:  # 0644: a viewer or web server may read the sheet
        if out.suffix.lower() in (".jpg", ".jpeg"):
            sheet.save(tmp, "JPEG", quality=85)
        else:
            sheet.save(tmp, "PNG")
    return out
