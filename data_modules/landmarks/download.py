"""Fetch Revisited Oxford / Paris (ground truth and images) from the official releases.

Layout, as revisitop's ``download.py`` (one folder per dataset)::

    ROOT/roxford5k/gnd_roxford5k.pkl   ROOT/roxford5k/jpg/*.jpg
    ROOT/rparis6k/gnd_rparis6k.pkl     ROOT/rparis6k/jpg/*.jpg
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from cbir_lightning.errors import CbirError
from data_modules.io.download import fetch
from data_modules.landmarks.gnd import load_gnd

GND_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets/{dataset}/gnd_{dataset}.pkl"
IMAGE_URLS = {
    "roxford5k": ["https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz"],
    "rparis6k": [
        "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz",
        "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz",
    ],
}
REVISITED = tuple(IMAGE_URLS)


def extract_jpgs(archive: Path, folder: Path) -> int:
    """Copy every ``*.jpg`` of a tar archive into ``folder`` (flat, as revisitop); returns the count."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = PurePosixPath(member.name).name
                if member.isfile() and name.lower().endswith(".jpg") and name not in ("", ".", ".."):
                    source = tar.extractfile(member)
                    with source, (folder / name).open("wb") as out:
                        shutil.copyfileobj(source, out)
                    count += 1
    except (tarfile.TarError, OSError) as err:
        raise CbirError(f"{archive} is not a readable image archive ({err}); download it again") from err
    return count


def download_revisited(dataset: str, root: str | Path, images: bool = True, gnd_url: str = GND_URL) -> dict:
    """Fetch ``gnd_<dataset>.pkl`` (checked with the restricted unpickler) and, with ``images``, the jpgs."""
    if dataset not in IMAGE_URLS:
        raise CbirError(f"unknown dataset {dataset!r}; available: {', '.join(REVISITED)}")
    folder = Path(root) / dataset
    gnd_file = folder / f"gnd_{dataset}.pkl"
    if not gnd_file.is_file():
        fetch(gnd_url.format(dataset=dataset), gnd_file)
    truth = load_gnd(gnd_file)
    jpg = folder / "jpg"
    missing = [name for name in [*truth.imlist, *truth.qimlist] if not (jpg / f"{name}.jpg").is_file()]
    if images and missing:
        for url in IMAGE_URLS[dataset]:
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                archive = Path(tmp) / PurePosixPath(url).name
                fetch(url, archive, timeout=600.0)
                extract_jpgs(archive, jpg)
        missing = [name for name in [*truth.imlist, *truth.qimlist] if not (jpg / f"{name}.jpg").is_file()]
    return {
        "dataset": dataset,
        "gnd": str(gnd_file),
        "images": str(jpg),
        "queries": truth.num_queries,
        "database": len(truth.imlist),
        "missing_images": len(set(missing)),
    }
