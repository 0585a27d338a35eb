"""What each command imports: a search-side command (index, search, recommend, serve, convert, export)
imports no data set; every module of the toolkit imports at its top but for the optional heavy
dependencies and the cycles named, each with its reason."""

from __future__ import annotations

import ast
import subprocess
import sys

from helpers.paths import REPO

SEARCH_SIDE = ("index", "search", "recommend", "serve", "convert", "export")
# the imports left inside functions, each on a line (or under a comment line) that says why
HEAVY_OR_CYCLE = (
    "onnx", "onnxruntime", "onnx_export", "wandb", "google.protobuf", "faiss", "timm", "scipy",
    "torchvision", "uvicorn", "web.app", "lightning_cli", "cbir_lightning.api", "cli.overview",
    "cli.dispatch", "cli.evaluate", "jsonargparse.ArgumentError", "pymilvus",
)  # fmt: skip


def test_search_side_commands_import_no_data_set():
    code = (
        "import sys\n"
        "from cbir_lightning.cli.dispatch import tool_function\n"
        f"for name in {SEARCH_SIDE!r}:\n"
        "    tool_function(name)\n"
        "found = sorted(m for m in sys.modules if m == 'data_modules' or m.startswith('data_modules.'))\n"
        "assert not found, found\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def _function_imports(path):
    """``(line, imported names, the import's text, whether a comment says why)`` of every import inside
    a function: the comment on its line or on the line above its group of imports."""
    lines = path.read_text().splitlines()
    for func in ast.walk(ast.parse(path.read_text())):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    module = node.module if isinstance(node, ast.ImportFrom) else None
                    names = [f"{module}.{a.name}" if module else a.name for a in node.names]
                    text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                    above = node.lineno - 2
                    while above >= 0 and (lines[above].strip() == "" or " import " in f" {lines[above]}"):
                        above -= 1  # up through the group of imports
                    yield node.lineno, names, text, "#" in text or lines[above].strip().startswith("#")


def test_function_level_imports_are_heavy_or_break_a_cycle_and_say_why():
    found = []
    for package in ("cbir_lightning", "data_modules"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for line, names, text, said in _function_imports(path):
                allowed = all(any(h in n for h in HEAVY_OR_CYCLE) for n in names)
                if not (allowed and said):
                    found.append(f"{rel}:{line}: {text.strip()}")
    assert not found, "imports inside functions without a reason:\n" + "\n".join(found)
