"""Fetch Omniglot sets from the official release, as torchvision does (needs the internet)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cbir_lightning.errors import CbirError
from data_modules.omniglot.files import OMNIGLOT_FOLDER, locate_set

RELEASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"


def download_omniglot(root: str | Path, sets: Sequence[str]) -> None:
    """Download each missing set's zip into ``root/omniglot-py/`` and extract it there.

    ``images_background`` / ``images_evaluation`` go through ``torchvision.datasets.Omniglot``
    (checksummed); the small and other sets come from the same release folder.
    """
    # torchvision's downloader (heavy import): only when a set is downloaded
    from torchvision.datasets import Omniglot
    from torchvision.datasets.utils import download_and_extract_archive

    for name in sets:
        try:
            locate_set(root, name)
            continue
        except CbirError:
            pass
        try:
            if name in Omniglot.zips_md5:
                Omniglot(str(root), background=name == "images_background", download=True)
            else:
                download_and_extract_archive(f"{RELEASE_URL}/{name}.zip", str(Path(root) / OMNIGLOT_FOLDER))
        except OSError as err:
            raise CbirError(
                f"could not download Omniglot set '{name}' from {RELEASE_URL} ({err}); offline, place "
                f"{name}.zip in {Path(root) / OMNIGLOT_FOLDER}"
            ) from err
