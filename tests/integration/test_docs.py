"""The README stays a user's guide (at most 300 lines, every relative link alive) and the documentation site
builds with ``mkdocs build --strict`` (a broken link or anchor, a missing page or one left out of the nav
fails)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

from helpers.paths import REPO

README = REPO / "README.md"
MAX_README_LINES = 300
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)


def test_readme_has_at_most_300_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; the rest goes to docs/"


def _slug(heading: str) -> str:
    """Python-Markdown's toc anchor of a heading (mkdocs' default, and GitHub's for plain headings)."""
    text = re.sub(r"[`*]", "", heading).strip()
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(markdown: Path) -> set[str]:
    text = CODE_BLOCK.sub("", markdown.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_every_relative_link_in_the_readme_points_to_an_existing_file_and_heading():
    text = CODE_BLOCK.sub("", README.read_text(encoding="utf-8"))
    links = [m.group(1) for m in LINK.finditer(text)]
    relative = [link for link in links if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", link)]
    assert relative, "the README links to no documentation page"
    broken = []
    for link in relative:
        path, _, anchor = unquote(link).partition("#")
        target = (README.parent / path).resolve()
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(REPO)}")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {path}")
    assert not broken, "\n".join(broken)


def test_docs_build_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "experiments" / "training-that-pays" / "index.html").is_file()


def test_every_docs_page_is_in_the_nav():
    """mkdocs only warns about a page missing from the nav; --strict makes it fail, and this says which."""
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md"))
    missing = [page for page in pages if page not in nav]
    assert not missing, f"docs pages not in mkdocs.yml's nav: {missing}"
    assert Path(REPO / "docs" / "images").is_dir()
