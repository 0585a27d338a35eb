"""``cbir-lightning download --dataset stanford_dogs``: the release's three tars, fetched and extracted
(served here from file:// URLs built from the shared subset in the release layout)."""

from __future__ import annotations

import io
import tarfile

import pytest
from helpers.paths import SHARED_DATA

from cbir_lightning.errors import CbirError
from data_modules.photo_collection import PhotoCollectionDataModule
from data_modules.stanford_dogs.download import ARCHIVES, download_stanford_dogs

DOGS = SHARED_DATA / "stanford_dogs"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    if not (DOGS / "lists").is_dir():
        pytest.skip(f"no Stanford Dogs release at {DOGS}")
    served = tmp_path_factory.mktemp("release")
    breeds = sorted(p.name for p in (DOGS / "Images").iterdir())[:2]
    for name, folder in ARCHIVES.items():
        with tarfile.open(served / name, "w") as tar:
            if folder == "lists":
                tar.add(DOGS / folder, arcname=folder)
            else:  # two breeds keep the test small; the lists still name all sixty
                for breed in breeds:
                    tar.add(DOGS / folder / breed, arcname=f"{folder}/{breed}")
    return served, breeds


def test_download_extracts_the_release_layout(release, tmp_path):
    served, breeds = release
    result = download_stanford_dogs(tmp_path / "dogs", base_url=served.as_uri())
    assert result["breeds"] == 2
    root = tmp_path / "dogs"
    assert sorted(p.name for p in (root / "Images").iterdir()) == breeds
    assert (root / "lists" / "train_list.mat").is_file() and (root / "Annotation" / breeds[0]).is_dir()
    assert [p.name for p in root.iterdir() if p.name.startswith("tmp")] == []  # archives removed
    # the lists name breeds that are not there: the reader says which file is missing
    with pytest.raises(CbirError, match=r"Images/.* \(in lists/train_list.mat\) not found"):
        PhotoCollectionDataModule(root=str(root), layout="stanford_dogs", num_workers=0).setup()


def test_offline_names_the_file_and_where_to_put_it(tmp_path):
    with pytest.raises(CbirError, match=r"could not download .*images.tar .*offline, place images.tar in"):
        download_stanford_dogs(tmp_path / "dogs", base_url=(tmp_path / "nowhere").as_uri())


def test_an_archive_member_leaving_the_root_is_refused(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "images.tar", "w") as tar:
        member = tarfile.TarInfo("../../escaped.txt")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"evil"))
    with pytest.raises(CbirError, match="would leave"):
        download_stanford_dogs(tmp_path / "dogs", base_url=served.as_uri())
    assert not (tmp_path / "escaped.txt").exists()
