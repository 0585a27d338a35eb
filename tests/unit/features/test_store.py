"""FeatureStore, content names and CachedViews: entries follow content, shards are whole, recipes stay
apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cbir_lightning.errors import CbirError
from cbir_lightning.features import (
    CachedViews,
    FeatureStore,
    FileDigests,
    fill_store,
    identities,
    module_digest,
    view_generator,
    view_name,
)


class Files:
    """A ViewSource over small .npy 'photos': the view is the array (plus noise drawn from the generator)."""

    recipe = {"kind": "test", "size": 4}

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.labels = torch.arange(len(paths)) % 2
        self.calls: list[tuple[int, bool]] = []

    def __len__(self) -> int:
        return len(self.paths)

    def sources(self, i: int) -> tuple:
        return (self.paths[i],)

    def view(self, i: int, generator) -> torch.Tensor:
        self.calls.append((i, generator is not None))
        x = torch.from_numpy(np.load(self.paths[i])).float()
        return x if generator is None else x + torch.rand(x.shape, generator=generator)


def photos(folder: Path, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"p{i}.npy"
        np.save(path, np.full((1, 2, 2), float(i), dtype=np.float32))
        paths.append(path)
    return paths


TRUNK = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()


def build(root: Path, source: Files, views: int = 2) -> tuple[FeatureStore, list[str], int]:
    store = FeatureStore.open(root, module_digest(TRUNK), {"views": source.recipe})
    names = identities(source, FileDigests(root))
    computed = fill_store(
        store, TRUNK, source, names, views, dtype=torch.float32, shard_size=4, progress=False
    )
    return store, names, computed


def test_views_are_stored_once_and_read_back_exactly(tmp_path):
    source = Files(photos(tmp_path / "photos"))
    store, names, computed = build(tmp_path / "cache", source)
    assert computed == 5 * 3
    cached = CachedViews(store, names, 2)
    with torch.no_grad():
        for i in range(5):
            assert torch.equal(cached.features(i, 0), TRUNK(source.view(i, None)[None])[0])
            augmented = source.view(i, view_generator(names[i], 2))
            assert torch.equal(cached.features(i, 2), TRUNK(augmented[None])[0])
    # shards of at most 4 views, each a complete .npy file; a second build computes nothing
    assert all(np.load(p).shape[0] <= 4 for p in (store.folder / "shards").glob("*.npy"))
    assert build(tmp_path / "cache", Files(source.paths))[2] == 0


def test_a_changed_photo_is_computed_again_and_nothing_else(tmp_path):
    paths = photos(tmp_path / "photos")
    build(tmp_path / "cache", Files(paths))
    np.save(paths[3], np.full((1, 2, 2), 7.0, dtype=np.float32))  # new content, new size/mtime
    source = Files(paths)
    store, names, computed = build(tmp_path / "cache", source)
    assert computed == 3  # its evaluation view and its 2 augmented views
    assert sorted({i for i, _ in source.calls}) == [3]
    with torch.no_grad():
        assert torch.equal(CachedViews(store, names, 2).features(3, 0), TRUNK(source.view(3, None)[None])[0])


def test_a_renamed_photo_is_found_by_its_content(tmp_path):
    paths = photos(tmp_path / "photos")
    build(tmp_path / "cache", Files(paths))
    moved = paths[0].with_name("renamed.npy")
    paths[0].rename(moved)
    assert build(tmp_path / "cache", Files([moved, *paths[1:]]))[2] == 0


def test_views_depend_on_content_and_view_number_only():
    a, b = view_generator("ab" * 32, 1), view_generator("ab" * 32, 1)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    assert not torch.equal(torch.rand(3, generator=view_generator("ab" * 32, 2)), torch.rand(3, generator=b))
    assert view_name("ab", 3) == "ab/3"


def test_another_trunk_or_recipe_gets_another_store(tmp_path):
    source = Files(photos(tmp_path / "photos"))
    store, _, _ = build(tmp_path / "cache", source)
    other = FeatureStore.open(
        tmp_path / "cache", module_digest(TRUNK), {"views": {**source.recipe, "size": 5}}
    )
    assert other.folder != store.folder
    changed = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    assert module_digest(changed) != module_digest(TRUNK)


def test_a_store_written_for_another_recipe_is_refused(tmp_path):
    store = FeatureStore(tmp_path / "store", {"trunk": "a", "views": {"size": 4}})
    meta = json.loads((store.folder / "meta.json").read_text())
    assert meta["recipe"]["views"] == {"size": 4}
    with pytest.raises(CbirError, match="another trunk or view recipe"):
        FeatureStore(tmp_path / "store", {"trunk": "b", "views": {"size": 4}})


def test_incomplete_store_is_reported(tmp_path):
    source = Files(photos(tmp_path / "photos"))
    store, names, _ = build(tmp_path / "cache", source, views=0)
    with pytest.raises(CbirError, match="lacks 10 views"):
        CachedViews(store, names, 2)


def test_file_digests_rehash_only_changed_files(tmp_path, monkeypatch):
    paths = photos(tmp_path / "photos", 3)
    digests = FileDigests(tmp_path / "cache")
    first = digests.digests(paths)
    hashed = []
    import cbir_lightning.features.views as views

    real = views._sha256_file
    monkeypatch.setattr(views, "_sha256_file", lambda p: hashed.append(p) or real(p))
    assert digests.digests(paths) == first and hashed == []
    np.save(paths[1], np.zeros((1, 2, 3), dtype=np.float32))
    again = digests.digests(paths)
    assert hashed == [paths[1]] and again[0] == first[0] and again[1] != first[1]


def test_a_dead_writers_temporary_shard_is_swept_and_a_live_ones_kept(tmp_path):
    import fcntl

    store = FeatureStore(tmp_path / "store", {"trunk": "a"})
    dead, live = store.folder / "shards" / ".dead.npy.x.tmp", store.folder / "shards" / ".live.npy.y.tmp"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    with open(live, "rb+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        FeatureStore(tmp_path / "store", {"trunk": "a"})
        assert not dead.exists() and live.exists()
