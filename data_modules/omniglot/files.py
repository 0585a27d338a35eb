"""Find and read Omniglot image sets in torchvision's layout, from folders or straight from the zips.

A set (``images_background``, ``images_evaluation``, ``images_background_small1``, ...) is looked up
under ``root`` as ``omniglot-py/<set>/``, ``<set>/``, ``omniglot-py/<set>.zip`` or ``<set>.zip``; inside it
the layout is ``<Alphabet>/characterNN/NNNN_DD.png`` where ``DD`` is the drawer (1..20).
Alphabets present in several sets (Greek and Latin are in both small background sets) are read once.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cbir_lightning.errors import CbirError
from data_modules.transforms.images import load_png, resize_uint8

OMNIGLOT_FOLDER = "omniglot-py"
SMALL_SETS = ("images_background_small1", "images_background_small2")
_PNG = re.compile(r"^(?P<alphabet>[^/]+)/(?P<character>character\d+)/(?P<stem>\d+_(?P<drawer>\d+))\.png$")


@dataclass
class OmniglotImages:
    """Decoded images (uint8, ink = 255, ``[n, 1, size, size]``) with their alphabet, character and drawer."""

    images: torch.Tensor
    alphabet: list[str]
    character: list[str]  # "<Alphabet>/characterNN": unique over the whole collection
    drawer: torch.Tensor  # int64 [n], 1-based
    files: list[str]

    @property
    def labels(self) -> torch.Tensor:
        """Integer class id per image (one class per character), in order of first appearance."""
        ids: dict[str, int] = {}
        return torch.tensor([ids.setdefault(c, len(ids)) for c in self.character], dtype=torch.long)

    def alphabets(self) -> list[str]:
        return sorted(set(self.alphabet))

    def subset(self, keep: torch.Tensor) -> OmniglotImages:
        idx = keep.nonzero().flatten().tolist() if keep.dtype == torch.bool else keep.tolist()
        return OmniglotImages(
            images=self.images[idx],
            alphabet=[self.alphabet[i] for i in idx],
            character=[self.character[i] for i in idx],
            drawer=self.drawer[idx],
            files=[self.files[i] for i in idx],
        )


def locate_set(root: str | Path, name: str) -> Path:
    """Path of the folder or zip holding set ``name`` under ``root``; CbirError naming the candidates."""
    root = Path(root)
    candidates = [
        root / OMNIGLOT_FOLDER / name,
        root / name,
        root / OMNIGLOT_FOLDER / f"{name}.zip",
        root / f"{name}.zip",
    ]
    for path in candidates:
        if path.is_dir() or (path.suffix == ".zip" and path.is_file()):
            return path
    raise CbirError(
        f"Omniglot set '{name}' not found under {root}: expected "
        f"{candidates[0]}/<Alphabet>/characterNN/*.png or {candidates[2]} (torchvision's layout); "
        "run `make data` or set download: true"
    )


def _iter_pngs(path: Path, name: str) -> Iterator[tuple[str, str, bytes]]:
    """Yield (relative path inside the set, display name, PNG bytes)."""
    if path.is_dir():
        for file in sorted(path.rglob("*.png")):
            yield file.relative_to(path).as_posix(), str(file), file.read_bytes()
        return
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise CbirError(f"{path} is not a valid zip file ({err}); delete it and fetch it again") from err
    with archive:
        prefix = f"{name}/"
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not info.filename.endswith(".png"):
                continue
            inner = info.filename[len(prefix) :] if info.filename.startswith(prefix) else info.filename
            yield inner, f"{path}:{info.filename}", archive.read(info)


def read_omniglot(
    root: str | Path,
    sets: Sequence[str] = SMALL_SETS,
    alphabets: Sequence[str] | None = None,
    image_size: int = 105,
) -> OmniglotImages:
    """Decode the given sets (optionally only some alphabets), resized to ``image_size`` with antialiasing."""
    wanted = set(alphabets) if alphabets is not None else None
    seen_alphabets: set[str] = set()
    images, alphabet, character, drawer, files = [], [], [], [], []
    for name in sets:
        path = locate_set(root, name)
        in_this_set: set[str] = set()
        for inner, display, data in _iter_pngs(path, name):
            match = _PNG.match(inner)
            if match is None:
                raise CbirError(
                    f"unexpected file {display}: Omniglot sets hold <Alphabet>/characterNN/NNNN_DD.png"
                )
            alpha = match["alphabet"]
            if alpha in seen_alphabets or (wanted is not None and alpha not in wanted):
                continue
            in_this_set.add(alpha)
            images.append(load_png(data, display))
            alphabet.append(alpha)
            character.append(f"{alpha}/{match['character']}")
            drawer.append(int(match["drawer"]))
            files.append(display)
        seen_alphabets |= in_this_set
    if not images:
        raise CbirError(f"no Omniglot images found in sets {list(sets)} under {root}; check the layout")
    if wanted is not None and wanted - seen_alphabets:
        raise CbirError(
            f"alphabets {sorted(wanted - seen_alphabets)} not in sets {list(sets)} under {root}; "
            f"available: {sorted(seen_alphabets)}"
        )
    stacked = resize_uint8(torch.stack(images), image_size)
    return OmniglotImages(stacked, alphabet, character, torch.tensor(drawer), files)
