"""OmniglotDataModule on the real small sets: layouts (zip, extracted folders), splits, errors."""

from __future__ import annotations

import zipfile

import pytest
import torch

from cbir_lightning.errors import CbirError
from data_modules import OmniglotDataModule
from data_modules.omniglot.files import locate_set, read_omniglot


def test_reads_zips_and_dedupes_shared_alphabets(omniglot_root):
    images = read_omniglot(omniglot_root, image_size=28)
    assert images.alphabets() == [
        "Balinese",
        "Early_Aramaic",
        "Greek",
        "Japanese_(katakana)",
        "Korean",
        "Latin",
        "Sanskrit",
        "Tagalog",
    ]
    # 242 distinct characters x 20 drawers (Greek and Latin are in both small sets, read once)
    assert images.images.shape == (242 * 20, 1, 28, 28) and images.images.dtype == torch.uint8
    assert len(set(images.character)) == 242
    assert sorted(set(images.drawer.tolist())) == list(range(1, 21))
    # ink is 255, background 0: most pixels are background
    assert images.images.float().mean() < 60


def test_extracted_torchvision_layout_matches_zip(omniglot_root, tmp_path):
    target = tmp_path / "omniglot-py"
    with zipfile.ZipFile(omniglot_root / "images_background_small2.zip") as archive:
        members = [m for m in archive.namelist() if "/Tagalog/" in m]
        archive.extractall(target, members=members)
    assert locate_set(tmp_path, "images_background_small2") == target / "images_background_small2"
    from_folder = read_omniglot(tmp_path, ["images_background_small2"], image_size=32)
    from_zip = read_omniglot(
        omniglot_root, ["images_background_small2"], alphabets=["Tagalog"], image_size=32
    )
    assert torch.equal(from_folder.images, from_zip.images)
    assert from_folder.character == from_zip.character


def test_split_never_trains_on_evaluation_alphabets(omniglot_root):
    dm = OmniglotDataModule(root=omniglot_root, image_size=28, trials=20, epoch_length=2)
    dm.setup("fit")
    train, val = set(dm.train_images.alphabet), set(dm.val_images.alphabet)
    assert val == {"Japanese_(katakana)", "Sanskrit"} and train.isdisjoint(val)
    assert not set(dm.train_images.character) & set(dm.val_images.character)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and len(torch.unique(y)) == 32
    images, labels, index = next(iter(dm.val_dataloader()))
    assert torch.equal(index, torch.arange(len(index)))
    assert dm.episodes.candidates.shape == (20, 20)


@pytest.mark.parametrize(
    "rotations, reflections, variants", [(True, False, 4), (False, True, 2), (True, True, 8)]
)
def test_rotated_and_mirrored_characters_become_new_classes(omniglot_root, rotations, reflections, variants):
    dm = OmniglotDataModule(
        root=omniglot_root,
        image_size=20,
        val_alphabets=None,
        train_alphabets=["Tagalog"],
        rotation_classes=rotations,
        reflection_classes=reflections,
        augment=False,
    )
    dm.setup("fit")
    base, base_labels = dm.train_images.images, dm.train_images.labels
    data = dm.train_dataloader().dataset
    assert data.num_classes == variants * len(torch.unique(base_labels)) == variants * 17
    # the batches' labels are global class ids 0..num_classes-1 over every variant (a class loss's targets)
    assert dm.num_classes == data.num_classes
    assert torch.equal(torch.unique(data.inverse), torch.arange(dm.num_classes))
    # the variants of one drawing, in the order rotations 0-3, then their mirror images
    turns = [torch.rot90(base, r, (2, 3)) for r in (range(4) if rotations else [0])]
    expected = turns + ([t.flip(3) for t in turns] if reflections else [])
    assert torch.equal(data.images, torch.cat(expected))
    # a variant of a character is one class, never the class of another variant or character
    classes = data.inverse.view(variants, len(base))
    for v in range(variants):
        assert torch.equal(
            torch.unique(classes[v], return_inverse=True)[1],
            torch.unique(base_labels, return_inverse=True)[1],
        )
    assert len(torch.unique(classes)) == variants * 17 and not set(classes[0].tolist()) & set(
        classes[-1].tolist()
    )


def test_drawer_split(omniglot_root):
    dm = OmniglotDataModule(
        root=omniglot_root,
        image_size=28,
        trials=10,
        train_drawers=list(range(1, 13)),
        val_drawers=[13, 14, 15, 16],
    )
    dm.setup("fit")
    assert set(dm.train_images.drawer.tolist()) == set(range(1, 13))
    assert set(dm.val_images.drawer.tolist()) == {13, 14, 15, 16}


def test_validation_on_other_drawers_of_the_training_characters(omniglot_root):
    every = ["Greek", "Tagalog"]
    dm = OmniglotDataModule(
        root=omniglot_root,
        image_size=20,
        trials=10,
        train_alphabets=every,
        val_alphabets=every,
        train_drawers=list(range(1, 17)),
        val_drawers=[17, 18, 19, 20],
    )
    dm.setup("fit")
    assert set(dm.train_images.character) == set(dm.val_images.character)  # the same 24 + 17 characters
    assert len(set(dm.train_images.character)) == 41 and dm.num_classes == 41
    assert not set(dm.train_images.drawer.tolist()) & set(dm.val_images.drawer.tolist())
    # 20-way trials come only from the alphabet with at least 20 characters (Greek)
    assert {dm.val_images.alphabet[int(q)] for q in dm.episodes.queries} == {"Greek"}
    for drawers in (None, [16, 17, 18]):  # all drawers on one side, or a shared drawer: a leak
        with pytest.raises(CbirError, match="in both train_alphabets and val_alphabets"):
            OmniglotDataModule(
                root=omniglot_root,
                train_alphabets=every,
                val_alphabets=every,
                val_drawers=drawers,
                train_drawers=None if drawers is None else list(range(1, 17)),
            ).setup("fit")


def test_missing_root_names_expected_layout(tmp_path):
    dm = OmniglotDataModule(root=tmp_path / "nowhere")
    with pytest.raises(CbirError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "\n" not in message
    assert "images_background_small1" in message and "omniglot-py" in message and "make data" in message


def test_corrupt_png_names_the_file(omniglot_root, tmp_path):
    folder = tmp_path / "omniglot-py" / "images_background_small2" / "Tagalog" / "character01"
    folder.mkdir(parents=True)
    (folder / "0001_01.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(CbirError, match=r"0001_01\.png.*corrupt"):
        read_omniglot(tmp_path, ["images_background_small2"])


def test_unknown_alphabet_and_too_many_ways(omniglot_root):
    with pytest.raises(CbirError, match="Klingon"):
        OmniglotDataModule(root=omniglot_root, val_alphabets=["Klingon"]).setup("fit")
    with pytest.raises(CbirError, match="ways=50 is larger"):
        OmniglotDataModule(root=omniglot_root, image_size=28, ways=50).setup("fit")


def test_eval_transform_matches_the_validation_loader(omniglot_root):
    import io
    import zipfile

    from PIL import Image

    dm = OmniglotDataModule(root=omniglot_root, image_size=28)
    dm.setup("fit")
    v = dm.val_images
    i = len(v.files) // 2
    zip_path, inner = v.files[i].split(".zip:")
    with zipfile.ZipFile(f"{zip_path}.zip") as archive:
        png = archive.read(inner)
    image, label, index = dm.val_dataloader().dataset[i]
    assert torch.equal(dm.eval_transform(Image.open(io.BytesIO(png))), image)
    # whitening pairs: every pair of drawings of one training character, and only those
    data, pairs = dm.whitening_data()
    labels = dm.train_images.labels
    assert torch.equal(labels[pairs[:, 0]], labels[pairs[:, 1]])
    counts = torch.bincount(labels)
    assert len(pairs) == int((counts * (counts - 1) // 2).sum())


def test_class_batches_from_one_alphabet_orientation(omniglot_root):
    """alphabets_per_batch: 1 with rotations: each batch's characters come from one alphabet in one
    orientation (two when that one has too few characters), read back from the global class ids."""
    dm = OmniglotDataModule(
        root=omniglot_root,
        image_size=20,
        val_alphabets=None,
        train_alphabets=["Tagalog", "Korean"],  # 17 and 40 characters
        rotation_classes=True,
        classes_per_batch=20,
        samples_per_class=2,
        alphabets_per_batch=1,
        epoch_length=40,
        augment=False,
    )
    dm.setup("fit")
    data = dm.train_dataloader().dataset
    chars = dm.train_images.labels
    alphabet_of_char = {int(c): a for c, a in zip(chars.tolist(), dm.train_images.alphabet, strict=True)}
    per_turn = int(chars.max()) + 1
    for key in range(40):
        _, y = data[key]
        kinds = {(alphabet_of_char[int(c) % per_turn], int(c) // per_turn) for c in torch.unique(y)}
        alphabets = {a for a, _ in kinds}
        assert len(torch.unique(y)) == 20
        assert len(kinds) == 1 or (len(kinds) == 2 and any(a == "Tagalog" for a in alphabets)), kinds
    with pytest.raises(CbirError, match="alphabets_per_batch"):
        OmniglotDataModule(root=omniglot_root, sampling="pairs", alphabets_per_batch=2)
