"""Lake-format one-shot runs built from the real Omniglot zips: format, round trips, scoring, errors."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.paths import OMNIGLOT
from PIL import Image

from cbir_lightning.errors import CbirError
from data_modules.omniglot.oneshot_runs import (
    OneShotRun,
    build_runs_from_omniglot,
    evaluate_oneshot_runs,
    load_oneshot_runs,
    write_oneshot_runs,
)
from data_modules.transforms.images import encode_png, load_png

ZIPS = [OMNIGLOT / "images_background_small1.zip", OMNIGLOT / "images_background_small2.zip"]
LINE_RE = re.compile(r"^run\d\d/test/item\d\d\.png run\d\d/training/class\d\d\.png$")
MEMBER_RE = re.compile(r"^[^/]+/(?P<alphabet>[^/]+)/(?P<character>character\d\d)/\d+_(?P<drawer>\d\d)\.png$")

pytestmark = pytest.mark.skipif(
    not all(z.is_file() for z in ZIPS), reason=f"Omniglot background zips not found in {OMNIGLOT}"
)


def neg_l1(test: torch.Tensor, training: torch.Tensor) -> torch.Tensor:
    """Similarity = minus the pixel L1 distance, [n_test, n_training]."""
    return -torch.cdist(test.flatten(1).float(), training.flatten(1).float(), p=1)


@pytest.fixture(scope="module")
def source_index() -> dict[bytes, set[tuple[str, str, str]]]:
    """PNG bytes -> {(alphabet, character, drawer)} over both zips."""
    index: dict[bytes, set] = {}
    for path in ZIPS:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                m = MEMBER_RE.match(name)
                if m:
                    index.setdefault(zf.read(name), set()).add((m["alphabet"], m["character"], m["drawer"]))
    return index


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory) -> Path:
    return build_runs_from_omniglot(ZIPS, None, tmp_path_factory.mktemp("built") / "all_runs", seed=0)


@pytest.fixture(scope="module")
def loaded(all_runs) -> list[OneShotRun]:
    return load_oneshot_runs(all_runs)


@pytest.fixture()
def small_runs(tmp_path) -> Path:
    return build_runs_from_omniglot(ZIPS, ["Latin"], tmp_path / "small", num_runs=2, ways=5, seed=1)


def zip_folder(folder: Path, dest: Path, top: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, top + f.relative_to(folder).as_posix())
    return dest


def test_on_disk_format_matches_lake(all_runs, source_index):
    runs = sorted(p.name for p in all_runs.iterdir())
    assert runs == [f"run{r:02d}" for r in range(1, 21)]
    assert not [p for p in all_runs.parent.iterdir() if p != all_runs], "temporary files left behind"
    for run in runs:
        files = sorted(p.relative_to(all_runs / run).as_posix() for p in (all_runs / run).rglob("*.*"))
        assert files == sorted(
            ["class_labels.txt"]
            + [f"training/class{j:02d}.png" for j in range(1, 21)]
            + [f"test/item{i:02d}.png" for i in range(1, 21)]
        )
        raw = (all_runs / run / "class_labels.txt").read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        lines = raw.decode().splitlines()
        assert len(lines) == 20
        assert all(LINE_RE.match(line) for line in lines), lines
        tests, trains = zip(*(line.split(" ") for line in lines), strict=True)
        assert list(tests) == [f"{run}/test/item{i:02d}.png" for i in range(1, 21)]
        assert sorted(trains) == [f"{run}/training/class{j:02d}.png" for j in range(1, 21)]

        origin = {}  # file -> (alphabet, character, drawer), from the original (copied) bytes
        for rel in tests + trains:
            found = source_index.get((all_runs / rel).read_bytes())
            assert found is not None and len(found) == 1, f"{rel} is not a byte copy of one source image"
            origin[rel] = next(iter(found))
        for test, train in zip(tests, trains, strict=True):
            assert origin[test][:2] == origin[train][:2], "test item and target must be the same character"
            assert origin[test][2] != origin[train][2], "test item and target need different drawers"
        assert len({origin[t][0] for t in trains}) == 1, "one alphabet per run"
        assert len({origin[t][1] for t in trains}) == 20
        assert len({origin[t][2] for t in trains}) == 1 and len({origin[t][2] for t in tests}) == 1


def test_build_is_seeded_and_shuffled(all_runs, tmp_path):
    labels = [(all_runs / f"run{r:02d}" / "class_labels.txt").read_text() for r in (1, 2)]
    again = build_runs_from_omniglot(ZIPS, None, tmp_path / "a", num_runs=2, seed=0)
    other = build_runs_from_omniglot(ZIPS, None, tmp_path / "b", num_runs=2, seed=5)
    assert [(again / f"run{r:02d}" / "class_labels.txt").read_text() for r in (1, 2)] == labels
    png = "run01/training/class07.png"
    assert (again / png).read_bytes() == (all_runs / png).read_bytes()
    assert (other / "run01" / "class_labels.txt").read_text() != labels[0]
    targets = [line.split()[1] for line in labels[0].splitlines()]
    assert targets != sorted(targets), "item order must be shuffled relative to the classes"


@pytest.mark.parametrize("layout", ["folder", "zip", "nested_zip"])
def test_round_trip(all_runs, loaded, tmp_path, layout):
    reference = loaded
    if layout == "folder":
        source = all_runs
    else:
        top = "all_runs/" if layout == "nested_zip" else ""
        source = zip_folder(all_runs, tmp_path / "all_runs.zip", top)
    runs = load_oneshot_runs(source)
    assert [r.name for r in runs] == [f"run{r:02d}" for r in range(1, 21)]
    for run, ref in zip(runs, reference, strict=True):
        assert (run.name, run.training, run.test) == (ref.name, ref.training, ref.test)
        assert run.targets == ref.targets
        assert torch.equal(run.training_images, ref.training_images)
        assert torch.equal(run.test_images, ref.test_images)
    run = runs[0]
    assert run.training_images.shape == run.test_images.shape == (20, 1, 105, 105)
    assert run.training_images.dtype == torch.uint8
    lines = (all_runs / "run01" / "class_labels.txt").read_text().split("\n")
    assert [f"{run.test[i]} {run.training[t]}" for i, t in enumerate(run.targets)] == lines[:-1]
    png = Image.open(all_runs / run.training[3]).convert("L")
    assert torch.equal(run.training_images[3, 0], torch.from_numpy(255 - np.asarray(png)))
    assert (run.training_images == 0).float().mean() > 0.5, "background must be 0 (ink = 255)"


def test_load_png_and_encode_png_are_inverse(all_runs):
    data = (all_runs / "run01" / "test" / "item01.png").read_bytes()
    image = load_png(data, "item01.png")
    assert image.shape == (1, 105, 105) and set(image.unique().tolist()) == {0, 255}
    assert torch.equal(load_png(encode_png(image)), image)
    assert torch.equal(load_png(all_runs / "run01" / "test" / "item01.png"), image)


def test_scores_identical_images_perfect_and_index0_one_in_twenty(loaded, tmp_path):
    runs = loaded
    always_first = lambda test, training: torch.zeros(len(test), len(training))  # noqa: E731 (ties)
    prefer_zero = lambda test, training: torch.eye(len(training))[[0] * len(test)]  # noqa: E731
    for fn in (always_first, prefer_zero):
        result = evaluate_oneshot_runs(runs, fn)
        assert result["per_run"] == {r.name: 1 / 20 for r in runs}
        assert result["accuracy"] == pytest.approx(1 / 20)
    real = evaluate_oneshot_runs(runs, neg_l1)["accuracy"]
    assert 0.0 < real < 1.0

    cheat = [(r.training_images, r.training_images[r.targets], r.targets) for r in runs[:3]]
    copied = load_oneshot_runs(write_oneshot_runs(tmp_path / "identical", cheat))
    assert [r.targets for r in copied] == [r.targets for r in runs[:3]]
    result = evaluate_oneshot_runs(copied, neg_l1)
    assert result == {"accuracy": 1.0, "per_run": {"run01": 1.0, "run02": 1.0, "run03": 1.0}}

    flipped = [
        OneShotRun(r.name, r.training, r.test, r.targets, r.training_images, r.training_images[r.targets])
        for r in runs[:2]
    ]
    worst = evaluate_oneshot_runs(flipped, lambda test, training: -neg_l1(test, training))
    assert worst["accuracy"] == 0.0
    with pytest.raises(ValueError, match="expected \\(20, 20\\)"):
        evaluate_oneshot_runs(runs[:1], lambda test, training: torch.zeros(20, 19))


def test_build_from_folder_layout_and_folder_of_zips(tmp_path):
    root = tmp_path / "omniglot"
    with zipfile.ZipFile(ZIPS[0]) as zf:
        zf.extractall(root, [n for n in zf.namelist() if n.startswith("images_background_small1/Latin/")])
    out = build_runs_from_omniglot([root], None, tmp_path / "from_folder", num_runs=2, ways=20)
    assert len(load_oneshot_runs(out)) == 2
    with pytest.raises(CbirError, match="no alphabet has >= 27 characters.*Latin with 26"):
        build_runs_from_omniglot([root], None, tmp_path / "x", ways=27)
    out = build_runs_from_omniglot([OMNIGLOT], ["Tagalog"], tmp_path / "from_zips", num_runs=1, ways=17)
    assert len(load_oneshot_runs(out)[0].training) == 17


def test_builder_errors_and_alphabet_dedupe(tmp_path):
    # Greek is in both zips with 24 characters; deduped by name, it must not merge into 48.
    build_runs_from_omniglot(ZIPS, ["Greek"], tmp_path / "greek", num_runs=1, ways=24)
    with pytest.raises(CbirError, match="no alphabet has >= 25 characters.*Greek with 24"):
        build_runs_from_omniglot(ZIPS, ["Greek"], tmp_path / "x", ways=25)
    with pytest.raises(CbirError, match="Klingon"):
        build_runs_from_omniglot(ZIPS, ["Klingon"], tmp_path / "x")
    with pytest.raises(CbirError, match="no alphabet has >= 50"):
        build_runs_from_omniglot(ZIPS, None, tmp_path / "x", ways=50)
    with pytest.raises(CbirError, match="nowhere.zip does not exist"):
        build_runs_from_omniglot([tmp_path / "nowhere.zip"], None, tmp_path / "x")
    with pytest.raises(CbirError, match="already exists"):
        build_runs_from_omniglot(ZIPS, ["Greek"], tmp_path / "greek", num_runs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["greek"]


def test_write_is_atomic(small_runs, tmp_path):
    good = load_oneshot_runs(small_runs)[0]
    bad = (good.training_images, [b"not a png"] * 5, good.targets)
    with pytest.raises(CbirError, match="run02/test/item01.png: image must be PNG"):
        write_oneshot_runs(tmp_path / "out" / "all_runs", [good, bad])
    assert list((tmp_path / "out").iterdir()) == [], "a failed write must leave nothing behind"
    with pytest.raises(CbirError, match="targets"):
        write_oneshot_runs(tmp_path / "out" / "all_runs", [(good.training_images, good.test_images, [0, 9])])
    out = write_oneshot_runs(small_runs, [good], overwrite=True)
    assert [r.name for r in load_oneshot_runs(out)] == ["run01"]


def test_load_errors_name_the_file(small_runs, tmp_path):
    layout = r"missing_dir does not exist.*runNN/class_labels\.txt.*training/classYY\.png.*test/itemXX\.png"
    with pytest.raises(CbirError, match=layout):
        load_oneshot_runs(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CbirError, match="no one-shot runs found in .*empty"):
        load_oneshot_runs(tmp_path / "empty")
    (tmp_path / "junk.zip").write_bytes(b"junk")
    with pytest.raises(CbirError, match="junk.zip is not a readable zip"):
        load_oneshot_runs(tmp_path / "junk.zip")

    png = small_runs / "run02" / "training" / "class02.png"
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(CbirError, match=r"run02/training/class02\.png: corrupt or unreadable image"):
        load_oneshot_runs(small_runs)
    (small_runs / "run01" / "test" / "item03.png").unlink()
    for source in (small_runs, zip_folder(small_runs, tmp_path / "runs.zip", "all_runs/")):
        with pytest.raises(CbirError, match=r"run01/test/item03\.png not found.*run01/class_labels\.txt"):
            load_oneshot_runs(source)

    labels = small_runs / "run01" / "class_labels.txt"
    labels.write_text("run01/test/item01.png\n")
    with pytest.raises(CbirError, match=r"run01/class_labels\.txt line 1: expected"):
        load_oneshot_runs(small_runs)
    labels.unlink()  # a run without its answers is named, not dropped from the accuracy
    for source in (small_runs, zip_folder(small_runs, tmp_path / "runs2.zip", "all_runs/")):
        with pytest.raises(CbirError, match=r"run01 has no class_labels\.txt"):
            load_oneshot_runs(source)
