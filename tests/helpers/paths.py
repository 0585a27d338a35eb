"""Where the tests find the repository and the real small data sets (../shared/data beside the checkout)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SHARED_DATA = REPO.parent / "shared" / "data"
OMNIGLOT = SHARED_DATA / "omniglot"
