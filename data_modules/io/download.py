"""Download one file from a release URL, atomically, with a one-line error when offline."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from cbir_lightning.errors import CbirError


def fetch(url: str, target: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``target`` atomically; CbirError (one line) when it cannot be reached."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        reason = " ".join(str(getattr(err, "reason", err)).split())[:200]
        raise CbirError(
            f"could not download {url} ({reason}); offline, place {target.name} in {target.parent}"
        ) from err
    partial.replace(target)
