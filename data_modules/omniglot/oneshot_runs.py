"""Brenden Lake's Omniglot one-shot classification runs (``all_runs``): load, write, build, evaluate.

Layout: a folder, or a .zip holding it (possibly under one top folder such as ``all_runs/``)::

    runNN/class_labels.txt      lines "runNN/test/itemXX.png runNN/training/classYY.png"
    runNN/training/classYY.png  one example per class
    runNN/test/itemXX.png       test items

Paths in ``class_labels.txt`` are relative to the folder holding the runs. Accuracy is the fraction of
test items whose most similar training image is the correct one, averaged over runs.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from cbir_lightning.errors import CbirError
from data_modules.transforms.images import PNG_SIGNATURE, encode_png, load_png

LAYOUT = "<dir>/runNN/class_labels.txt, <dir>/runNN/training/classYY.png, <dir>/runNN/test/itemXX.png"
OMNIGLOT_LAYOUT = "<root>/images_background*/<Alphabet>/characterNN/NNNN_DD.png (a folder or the zip)"
RUN_FOLDER = re.compile(r"run\d+")  # a run of Lake's layout: run01/, run02/, ...
_LABELS_RE = re.compile(r"^(?P<prefix>(?:[^/]+/)?)(?P<run>run\d+)/class_labels\.txt$")
_OMNIGLOT_RE = re.compile(
    r"^(?P<prefix>(?:.*/)?)(?P<alphabet>[^/]+)/(?P<character>character\d+)/\d+_(?P<drawer>\d+)\.png$"
)

ImageLike = bytes | torch.Tensor
"""PNG bytes (written verbatim) or a uint8 ``[1, H, W]`` tensor with ink = 255 (encoded as PNG)."""
RunSpec = tuple[Sequence[ImageLike], Sequence[ImageLike], Sequence[int]]
"""``(training, test, targets)``: ``targets[i]`` indexes ``training`` for test item ``i``."""


@dataclass
class OneShotRun:
    """One run; images are uint8 ``[N, 1, H, W]`` (ink = 255), ``targets[i]`` indexes ``training``."""

    name: str
    training: list[str]
    test: list[str]
    targets: list[int]
    training_images: torch.Tensor
    test_images: torch.Tensor


class _Source:
    """Read-only view of a folder or a zip file through relative posix member names."""

    def __init__(self, path: Path, what: str):
        self.path, self._zip = path, None
        if not path.exists():
            raise CbirError(f"{path} does not exist; expected a folder or .zip laid out as {what}")
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise CbirError(
                    f"{path} is not a readable zip file ({exc}); pass a folder or a valid .zip "
                    f"laid out as {what}"
                ) from exc

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def show(self, name: str) -> str:
        return f"{self.path}:{name}" if self._zip else os.path.join(self.path, name)

    def names(self, max_depth: int) -> Iterator[str]:
        """File names with at most ``max_depth`` path components, sorted, macOS metadata skipped."""
        if self._zip is not None:
            found = (n for n in self._zip.namelist() if not n.endswith("/") and n.count("/") < max_depth)
        else:
            found = self._walk(max_depth)
        return iter(sorted(n for n in found if not n.startswith("__MACOSX/")))

    def _walk(self, max_depth: int) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.path):
            rel = Path(dirpath).relative_to(self.path)
            if len(rel.parts) + 1 >= max_depth:
                dirnames.clear()
            yield from ((rel / f).as_posix() for f in filenames)

    def read(self, name: str, referenced_in: str | None = None) -> bytes:
        ref = f" (referenced in {referenced_in})" if referenced_in else ""
        if name.startswith("/") or ".." in name.split("/"):
            raise CbirError(f"{self.show(name)}: paths must stay inside {self.path}{ref}")
        try:
            if self._zip is not None:
                return self._zip.read(name)
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read()
        except (KeyError, OSError) as exc:
            raise CbirError(f"{self.show(name)} not found or unreadable{ref}; restore the file") from exc


def load_oneshot_runs(path: str | Path) -> list[OneShotRun]:
    """Load Lake-format runs from a folder or .zip, sorted by run name."""
    path = Path(path)
    with ExitStack() as stack:
        src = _Source(path, LAYOUT)
        stack.callback(src.close)
        found = [m for m in map(_LABELS_RE.match, src.names(max_depth=3)) if m]
        if not found:
            raise CbirError(f"no one-shot runs found in {path}; expected {LAYOUT}")
        prefixes = sorted({m["prefix"] for m in found})
        if len(prefixes) > 1:
            where = ", ".join(p or "./" for p in prefixes)
            raise CbirError(f"{path} holds runs in several folders ({where}); pass one of them")
        prefix = prefixes[0]
        depth = 3 + prefix.count("/")  # runNN/test/itemXX.png below the prefix
        present = {n[len(prefix) :].split("/")[0] for n in src.names(depth) if n.startswith(prefix)}
        labelled = {m["run"] for m in found}
        unlabelled = sorted(r for r in present if RUN_FOLDER.fullmatch(r) and r not in labelled)
        if unlabelled:  # a run without its answers would be dropped from the accuracy unseen
            raise CbirError(f"{src.show(prefix + unlabelled[0])} has no class_labels.txt; expected {LAYOUT}")
        found.sort(key=lambda m: (int(m["run"][3:]), m["run"]))
        return [_load_run(src, prefix, m["run"]) for m in found]


def _load_run(src: _Source, prefix: str, run: str) -> OneShotRun:
    labels = f"{prefix}{run}/class_labels.txt"
    pairs = []
    for n, line in enumerate(src.read(labels).decode("utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if len(parts) not in (0, 2):
            raise CbirError(
                f"{src.show(labels)} line {n}: expected '{run}/test/itemXX.png "
                f"{run}/training/classYY.png', got {line.strip()!r}"
            )
        pairs += [tuple(parts)] if parts else []
    test = sorted(t for t, _ in pairs)
    if not pairs or len(set(test)) != len(test):
        raise CbirError(f"{src.show(labels)}: needs one line per test item, each item listed once")
    pairs.sort()
    training = sorted({c for _, c in pairs})
    targets = [training.index(c) for _, c in pairs]
    imgs = [load_png(src.read(prefix + p, src.show(labels)), src.show(prefix + p)) for p in training + test]
    shapes = {tuple(img.shape) for img in imgs}
    if len(shapes) > 1:
        raise CbirError(
            f"{src.show(prefix + run)}: images have different sizes {sorted(shapes)}; "
            "all images of a run must have the same size"
        )
    images = torch.stack(imgs)
    return OneShotRun(run, training, test, targets, images[: len(training)], images[len(training) :])


def write_oneshot_runs(
    out: str | Path, runs: Sequence[RunSpec | OneShotRun], overwrite: bool = False
) -> Path:
    """Atomically write runs in Lake's layout and return ``out``.

    Run ``r`` (1-based) becomes ``runRR/``: ``training[j]`` -> ``training/classJJ.png``, ``test[i]`` ->
    ``test/itemII.png`` and line ``i`` of ``class_labels.txt`` pairs item ``i`` with class ``targets[i]``.
    Everything is written into a temporary folder next to ``out`` that is renamed at the end.
    """
    out = Path(out)
    if not runs:
        raise CbirError(f"no runs to write to {out}; pass at least one (training, test, targets) run")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise CbirError(f"{out} already exists; delete it or pass --overwrite true")
        if not is_runs_folder(out):
            raise CbirError(
                f"{out} is not a folder of one-shot runs (runNN/ folders only); --overwrite replaces only "
                "such a folder: pass another --out"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
    try:
        for r, run in enumerate(runs, 1):
            _write_run(tmp, f"run{r:02d}", run)
        tmp.chmod(0o755)
        if out.exists():
            os.replace(out, old)  # the runs being replaced, removed once the new ones are in place
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


def is_runs_folder(path: Path) -> bool:
    """Whether ``path`` is a real folder holding only ``runNN/`` folders (what ``write_oneshot_runs``
    writes), the only thing ``overwrite`` may replace: never a data folder, a file or a link."""
    if not path.is_dir() or path.is_symlink():
        return False
    return all(RUN_FOLDER.fullmatch(p.name) and p.is_dir() and not p.is_symlink() for p in path.iterdir())


def _write_run(root: Path, name: str, run: RunSpec | OneShotRun) -> None:
    if isinstance(run, OneShotRun):
        run = (run.training_images, run.test_images, run.targets)
    training, test, targets = run
    if len(targets) != len(test) or not all(0 <= int(t) < len(training) for t in targets):
        raise CbirError(
            f"{name}: targets must give one index below {len(training)} for each of the "
            f"{len(test)} test items"
        )
    (root / name / "training").mkdir(parents=True)
    (root / name / "test").mkdir()
    lines = []
    for j, image in enumerate(training, 1):
        _write_png(root / name / "training" / f"class{j:02d}.png", image)
    for i, (image, t) in enumerate(zip(test, targets, strict=True), 1):
        _write_png(root / name / "test" / f"item{i:02d}.png", image)
        lines.append(f"{name}/test/item{i:02d}.png {name}/training/class{int(t) + 1:02d}.png\n")
    (root / name / "class_labels.txt").write_bytes("".join(lines).encode())


def _write_png(path: Path, image: ImageLike) -> None:
    if isinstance(image, torch.Tensor):
        image = encode_png(image)
    if not isinstance(image, (bytes, bytearray)) or not bytes(image[:8]) == PNG_SIGNATURE:
        raise CbirError(
            f"{path.parent.parent.name}/{path.parent.name}/{path.name}: image must be PNG bytes "
            "or a uint8 [1, H, W] tensor"
        )
    path.write_bytes(image)


def build_runs_from_omniglot(
    zip_or_folder_paths: Sequence[str | Path],
    alphabets: Sequence[str] | None,
    out: str | Path,
    num_runs: int = 20,
    ways: int = 20,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build Lake-format runs from Omniglot images and return ``out``.

    Sources are Omniglot zips or folders (a folder's own ``*.zip`` files are read too); an alphabet found
    in several sources is taken from the first. Runs cycle through the (shuffled) alphabets having at least
    ``ways`` characters; each picks ``ways`` characters and two drawers (training from the first, test
    items from the second), shuffles both orders and copies the original PNG bytes.
    """
    if ways < 2 or num_runs < 1:
        raise CbirError(f"need ways >= 2 and num_runs >= 1, got ways={ways}, num_runs={num_runs}")
    with ExitStack() as stack:
        index = _index_omniglot(zip_or_folder_paths, stack)
        if alphabets is not None:
            unknown = sorted(set(alphabets) - set(index))
            if unknown:
                raise CbirError(
                    f"alphabet(s) {unknown} not found in the Omniglot sources; available: {sorted(index)}"
                )
            index = {a: index[a] for a in alphabets}
        eligible = sorted(a for a, chars in index.items() if len(chars) >= ways)
        if not eligible:
            largest = max(index, key=lambda a: len(index[a]))
            raise CbirError(
                f"no alphabet has >= {ways} characters (largest: {largest} with "
                f"{len(index[largest])}); lower ways or add alphabets"
            )
        rng = random.Random(seed)
        order = rng.sample(eligible, len(eligible))
        runs = [_pick_run(index[order[r % len(order)]], ways, rng) for r in range(num_runs)]
        return write_oneshot_runs(out, runs, overwrite=overwrite)


def _pick_run(chars: dict[str, dict[str, tuple[_Source, str]]], ways: int, rng: random.Random) -> RunSpec:
    training = rng.sample(sorted(chars), ways)
    drawers = sorted(set.intersection(*(set(chars[c]) for c in training)))
    if len(drawers) < 2:
        src, name = next(iter(chars[training[0]].values()))
        raise CbirError(
            f"{src.show(name)}: fewer than two drawers shared by the chosen characters; "
            "use complete Omniglot alphabets"
        )
    train_drawer, test_drawer = rng.sample(drawers, 2)
    test = rng.sample(training, ways)

    def read(character: str, drawer: str) -> bytes:
        src, name = chars[character][drawer]
        return src.read(name)

    return (
        [read(c, train_drawer) for c in training],
        [read(c, test_drawer) for c in test],
        [training.index(c) for c in test],
    )


def _index_omniglot(paths: Sequence[str | Path], stack: ExitStack) -> dict:
    """``{alphabet: {character: {drawer: (source, member)}}}``; first source wins per alphabet name."""
    index: dict[str, dict] = {}
    for path in map(Path, paths):
        subs = sorted(path.glob("*.zip")) if path.is_dir() else []
        groups: dict[tuple[int, str, str], dict] = {}
        for k, src in enumerate(_Source(p, OMNIGLOT_LAYOUT) for p in [path, *subs]):
            stack.callback(src.close)
            for m in map(_OMNIGLOT_RE.match, src.names(max_depth=5)):
                if m:
                    chars = groups.setdefault((k, m["prefix"], m["alphabet"]), {})
                    chars.setdefault(m["character"], {})[m["drawer"]] = (src, m.group(0))
        if not groups:
            raise CbirError(f"no Omniglot images found in {path}; expected {OMNIGLOT_LAYOUT}")
        for (_, _, alphabet), chars in sorted(groups.items(), key=lambda kv: kv[0]):
            index.setdefault(alphabet, chars)
    return index


def evaluate_oneshot_runs(
    runs: Sequence[OneShotRun], score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> dict:
    """Return ``{"accuracy": mean over runs, "per_run": {name: accuracy}}``.

    ``score_fn(test_images, training_images)`` gives ``[n_test, n_training]`` similarities (higher = more
    similar); the prediction is the first maximum of each row.
    """
    if not runs or len({r.name for r in runs}) != len(runs):
        raise CbirError("evaluate_oneshot_runs needs at least one run and unique run names")
    per_run = {}
    with torch.no_grad():
        for run in runs:
            scores = torch.as_tensor(score_fn(run.test_images, run.training_images))
            expected = (len(run.test), len(run.training))
            if tuple(scores.shape) != expected:
                raise ValueError(
                    f"score_fn returned shape {tuple(scores.shape)} for {run.name}; expected "
                    f"{expected} (test x training)"
                )
            pred = scores.float().argmax(dim=1).cpu()
            per_run[run.name] = int((pred == torch.tensor(run.targets)).sum()) / len(run.targets)
    return {"accuracy": sum(per_run.values()) / len(per_run), "per_run": per_run}
