"""PhotoCollectionDataModule on the real WikiArt (table) and Stanford Dogs (class folders) photos."""

from __future__ import annotations

import pytest
import torch
from helpers.paths import SHARED_DATA
from PIL import Image

from cbir_lightning.errors import CbirError
from data_modules.photo_collection import PhotoCollectionDataModule

WIKIART = SHARED_DATA / "wikiart_pd"
DOGS = SHARED_DATA / "stanford_dogs" / "Images"


@pytest.fixture(scope="module")
def wikiart():
    if not (WIKIART / "labels.tsv").is_file():
        pytest.skip(f"no {WIKIART / 'labels.tsv'}")
    return WIKIART


def make(root, **kwargs):
    options = {"image_size": 32, "num_workers": 0, "classes_per_batch": 4, "epoch_length": 3, **kwargs}
    module = PhotoCollectionDataModule(root=str(root), **options)
    module.setup()
    return module


def test_split_by_artist_is_class_disjoint_and_reproducible(wikiart):
    module = make(wikiart, labels_file="labels.tsv", label_column="artist", held_out_classes=6)
    train = set(module.labels[~module.is_eval].tolist())
    held = set(module.labels[module.is_eval].tolist())
    assert len(held) == 6 and len(train) == 20 and not train & held
    again = make(wikiart, labels_file="labels.tsv", label_column="artist", held_out_classes=6)
    assert torch.equal(module.is_eval, again.is_eval)
    other = make(wikiart, labels_file="labels.tsv", label_column="artist", held_out_classes=6, split_seed=1)
    assert not torch.equal(module.is_eval, other.is_eval)


def test_style_relevance_with_held_out_artists(wikiart):
    module = make(wikiart, labels_file="labels.tsv", label_column="style", group_column="artist",
                  held_out_classes=0.25, classes_per_batch=2)
    artists = [p.parent.name for p in module.collection.paths]
    held = {a for a, e in zip(artists, module.is_eval.tolist(), strict=True) if e}
    trained = {a for a, e in zip(artists, module.is_eval.tolist(), strict=True) if not e}
    assert len(held) == round(0.25 * 26) and not held & trained
    assert set(module.class_names) == {"Impressionism", "Pointillism", "Rococo", "Ukiyo_e"}
    images, labels, index = next(iter(module.val_dataloader()))
    assert images.shape[1:] == (3, 32, 32) and labels.dtype == torch.long
    assert index[0] == 0


def test_class_batches_stream_from_disk_the_same_for_any_worker_count():
    if not DOGS.is_dir():
        pytest.skip(f"no {DOGS}")
    serial = make(DOGS, held_out_classes=20, classes_per_batch=5, samples_per_class=3)
    parallel = make(DOGS, held_out_classes=20, classes_per_batch=5, samples_per_class=3, num_workers=2)
    a, b = list(serial.train_dataloader()), list(parallel.train_dataloader())
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == (15, 3, 32, 32) and torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(torch.bincount(ya)[torch.bincount(ya) > 0], torch.full((5,), 3))
    held = set(serial.labels[serial.is_eval].tolist())
    assert not held & set(torch.cat([y for _, y in a]).tolist())
    # the evaluation view of a photo is its centre square, ImageNet-normalised
    photo = Image.open(serial.collection.paths[0])
    assert serial.eval_transform(photo).shape == (3, 32, 32)


def test_split_column_and_whitening_pairs(tmp_path):
    for label in ("a", "b", "c"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (80 * i, 40, 0)).save(tmp_path / label / f"{i}.png")
    rows = ["file,kind,part"] + [
        f"{label}/{i}.png,{label},{'test' if label == 'c' else 'train'}" for label in "abc" for i in range(3)
    ]
    (tmp_path / "photos.csv").write_text("\n".join(rows) + "\n")
    module = make(tmp_path, labels_file="photos.csv", path_column="file", label_column="kind",
                  split_column="part", classes_per_batch=2)
    assert module.is_eval.tolist() == [False] * 6 + [True] * 3
    data, pairs = module.whitening_data()
    assert len(data) == 6 and pairs.tolist() == [[0, 1], [0, 2], [1, 2], [3, 4], [3, 5], [4, 5]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels_file": "labels.tsv", "label_column": "painter"}, "no label column 'painter'"),
        ({"labels_file": "nope.tsv"}, "labels file .*nope.tsv not found"),
        ({"labels_file": "labels.tsv", "label_column": "artist", "samples_per_class": 1},
         "samples_per_class is 1: class batches need at least 2"),
        ({"labels_file": "labels.tsv", "label_column": "style", "classes_per_batch": 9},
         "classes_per_batch is 9, but the training set has 3 classes"),
        ({"labels_file": "labels.tsv", "label_column": "style", "held_out_classes": 4},
         "held_out_classes=4 leaves 4 of 4 classes"),
        ({"labels_file": "labels.tsv", "label_column": "style", "held_out_classes": 1.5},
         "held_out_classes=1.5 leaves 0 of 4 classes"),
    ],
)
def test_bad_settings_are_one_line(wikiart, options, message):
    with pytest.raises(CbirError, match=message) as err:
        make(wikiart, **options).train_dataloader()
    assert "\n" not in str(err.value)


def test_missing_photo_is_named(tmp_path):
    (tmp_path / "t.tsv").write_text("path\tlabel\n\nmissing.jpg\tx\n")
    with pytest.raises(CbirError, match=r"t\.tsv line 3: photo .*missing\.jpg not found"):
        make(tmp_path, labels_file="t.tsv")


def test_bad_labels_files_are_one_line(wikiart, tmp_path):
    """A labels file that is not UTF-8 (a UnicodeDecodeError before), one listing a photo twice (it was its
    own relevant neighbour: metrics inflated) and held-out classes of one photo each (NaN metrics and
    exit 0 before) are refused in one line."""
    rows = (wikiart / "labels.tsv").read_text().splitlines()
    header, first = rows[0], [r for r in rows[1:] if r.strip()][:12]
    absolute = [str(wikiart / r.split("\t")[0]) + "\t" + r.split("\t", 1)[1] for r in first]
    latin1 = "\n".join([header, *absolute]) + "\ncaf\xe9\tx\ty\n"
    (tmp_path / "latin1.tsv").write_bytes(latin1.encode("latin-1"))
    with pytest.raises(CbirError, match=r"latin1\.tsv is not UTF-8 text \(byte 0xe9"):
        make(tmp_path, labels_file="latin1.tsv")
    (tmp_path / "twice.tsv").write_text("\n".join([header, *absolute, absolute[3]]) + "\n")
    with pytest.raises(CbirError, match=r"twice\.tsv line 14: photo .* is listed before, on line 5"):
        make(tmp_path, labels_file="twice.tsv", label_column="artist")
    artists = ["a"] * 6 + ["b"] * 5 + ["lonely"]  # the last class in sorted order, held out, has one photo
    single = [f"{r.split(chr(9))[0]}\t-\t{artist}" for r, artist in zip(absolute, artists, strict=True)]
    (tmp_path / "single.tsv").write_text("\n".join(["path\tstyle\tartist", *single]) + "\n")
    with pytest.raises(CbirError, match="every held-out class has a single photo"):
        make(tmp_path, labels_file="single.tsv", label_column="artist", held_out_classes=1)


def test_stanford_dogs_release_breeds_41_to_60_held_out_and_cropped_to_the_dog():
    root = DOGS.parent
    if not (root / "lists" / "train_list.mat").is_file():
        pytest.skip(f"no Stanford Dogs release at {root}")
    module = make(root, layout="stanford_dogs", held_out_classes=20, split_seed=None)
    names = module.class_names
    assert len(names) == 60 and names == sorted(names)
    held = {names[i] for i in module.labels[module.is_eval].unique().tolist()}
    assert held == set(names[40:])  # breeds 41-60 in the release's (wnid) order
    assert int(module.is_eval.sum()) == 20 * 50
    from data_modules.stanford_dogs.files import read_box

    i = int(torch.nonzero(module.is_eval)[0])
    path, annotation = module.collection.paths[i], module.collection.boxes[i]
    photo = Image.open(path).convert("RGB")
    expected = module.eval_transform(photo.crop(read_box(annotation, *photo.size)))
    images, labels, _ = module.val_dataloader().dataset[0]
    assert torch.equal(images, expected) and not torch.equal(images, module.eval_transform(photo))
    uncropped = make(root, layout="stanford_dogs", held_out_classes=20, split_seed=None, crop=False)
    assert torch.equal(uncropped.val_dataloader().dataset[0][0], module.eval_transform(photo))
