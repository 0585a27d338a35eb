"""Fetch Stanford Dogs from the official release (Khosla et al. 2011): ``images.tar``, ``annotation.tar``
and ``lists.tar``, extracted into ``ROOT/Images/``, ``ROOT/Annotation/`` and ``ROOT/lists/`` (the layout
:class:`~data_modules.StanfordDogsDataModule` and ``PhotoCollectionDataModule(layout: stanford_dogs)``
read). About 780 MB; needs the internet.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from cbir_lightning.errors import CbirError
from data_modules.io.download import fetch

RELEASE_URL = "http://vision.stanford.edu/aditya86/ImageNetDogs"
ARCHIVES = {"images.tar": "Images", "annotation.tar": "Annotation", "lists.tar": "lists"}


def extract_release_archive(archive: Path, root: Path) -> None:
    """Extract a release tar into ``root``, refusing members that would land outside it (absolute
    paths, ``..``, links): Python's ``data`` extraction filter."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts or member.issym() or member.islnk():
                    raise CbirError(f"{archive}: member {member.name!r} would leave {root}; download again")
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise CbirError(f"{archive} is not a readable tar archive ({err}); download it again") from err


def download_stanford_dogs(root: str | Path, base_url: str = RELEASE_URL) -> dict:
    """Download and extract each part of the release whose folder is missing under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, folder in ARCHIVES.items():
        if (root / folder).is_dir():
            continue
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            archive = Path(tmp) / name
            fetch(f"{base_url}/{name}", archive, timeout=600.0)
            extract_release_archive(archive, root)
        if not (root / folder).is_dir():
            raise CbirError(f"{base_url}/{name} did not hold {folder}/; expected the Stanford Dogs release")
    breeds = sorted(p.name for p in (root / "Images").iterdir() if p.is_dir())
    return {"dataset": "stanford_dogs", "root": str(root), "breeds": len(breeds)}
