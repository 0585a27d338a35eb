"""Training samples: reproducible under a seed (any num_workers, any epoch), balanced, sharded under DDP;
Koch's distortions; one-shot episodes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from cbir_lightning.errors import CbirError
from data_modules.sampling.episodes import make_episodes
from data_modules.sampling.pairs import ClassBatchDataset, PairDataset
from data_modules.sampling.samplers import EpochLoader, EpochSampler
from data_modules.transforms.augment import AffineRanges, apply_affine, random_affine_matrices


def _images(num_classes=10, per_class=5, size=12):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_classes * per_class, 1, size, size), generator=gen, dtype=torch.uint8)
    return images, torch.arange(num_classes).repeat_interleave(per_class)


def _epoch(dataset, epoch, workers, batch_size):
    sampler = EpochSampler(len(dataset))
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)
    return list(loader)


@pytest.mark.parametrize("kind", ["pairs", "class_batches"])
def test_same_seed_same_samples_with_workers(kind):
    images, labels = _images()
    if kind == "pairs":
        data, bs = PairDataset(images, labels, 16, seed=3, augment=AffineRanges()), 4
    else:
        data, bs = (
            ClassBatchDataset(images, labels, 4, 3, AffineRanges(), classes_per_batch=4, samples_per_class=3),
            None,
        )
    single = _epoch(data, 1, 0, bs)
    multi = _epoch(data, 1, 2, bs)
    for a, b in zip(single, multi, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    other_epoch = _epoch(data, 2, 0, bs)
    assert not torch.equal(single[0][0], other_epoch[0][0])
    other_seed = type(data).__new__(type(data))
    other_seed.__dict__.update(data.__dict__, seed=4)
    assert not torch.equal(single[0][0], _epoch(other_seed, 1, 0, bs)[0][0])


def test_pairs_are_balanced_and_labelled_right():
    images, labels = _images()
    # tag every image with its class in pixel (0, 0) so the pair's classes can be read back
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    data = PairDataset(images, labels, 200, seed=0, augment=None)
    same = []
    for i in range(len(data)):
        x1, x2, y = data[i]
        c1, c2 = round(float(x1[0, 0, 0]) * 255), round(float(x2[0, 0, 0]) * 255)
        assert (c1 == c2) == bool(y)
        same.append(float(y))
    assert sum(same) == len(same) / 2


def test_class_batches_have_p_classes_times_k():
    images, labels = _images()
    data = ClassBatchDataset(images, labels, 3, 0, None, classes_per_batch=4, samples_per_class=3)
    x, y = data[0]
    assert x.shape == (12, 1, 12, 12)
    assert sorted(torch.bincount(y).tolist())[-4:] == [3, 3, 3, 3]
    assert len(torch.unique(y)) == 4
    with pytest.raises(ValueError, match="classes_per_batch"):
        ClassBatchDataset(images, labels, 3, 0, None, classes_per_batch=11)


def test_epoch_sampler_shards_disjointly():
    shards = []
    for rank in range(2):
        sampler = EpochSampler(10, num_replicas=2, rank=rank)
        sampler.set_epoch(3)
        shards.append(list(sampler))
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(shards[0] + shards[1]) == [30 + i for i in range(10)]


def test_affine_identity_and_known_shift():
    image = torch.zeros(1, 1, 21, 21)
    image[0, 0, 10, 10] = 1.0
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert torch.allclose(apply_affine(image, identity), image, atol=1e-6)
    # a forward shift of +2 px to the right (2 * 2 / 21 in normalised units) moves the dot to column 12
    shift = torch.tensor([[[1.0, 0.0, 4.0 / 21], [0.0, 1.0, 0.0]]])
    moved = apply_affine(image, shift)[0, 0]
    assert moved.argmax().item() == 10 * 21 + 12


def test_koch_distortion_ranges():
    gen = torch.Generator().manual_seed(0)
    m = random_affine_matrices(4000, gen, AffineRanges())
    linear, shift = m[:, :, :2], m[:, :, 2]
    untouched = (linear - torch.eye(2)).abs().amax((1, 2)) < 1e-7
    # each of 4 distortions off with p=0.5 -> rotation, shear, scale all off with p=1/8
    assert abs(untouched.float().mean().item() - 1 / 8) < 0.03
    assert (shift.abs() <= 2 * 2 / 105 + 1e-6).all()
    assert abs((shift.abs().sum(1) == 0).float().mean().item() - 0.5) < 0.03
    det = torch.linalg.det(linear)
    assert det.min() > 0.8**2 * (1 - 0.3**2) - 1e-4 and det.max() < 1.2**2 * (1 + 0.3**2) + 1e-4
    assert math.isclose(float(AffineRanges().rotation_deg), 10.0)


def test_episodes_within_one_alphabet_and_fixed_by_seed():
    groups = ["A"] * 25 * 4 + ["B"] * 21 * 4 + ["C"] * 5 * 4
    labels = torch.arange(51).repeat_interleave(4)
    drawers = torch.arange(1, 5).repeat(51)
    eps = make_episodes(groups, labels, drawers, ways=20, trials=50, seed=1)
    assert eps.candidates.shape == (50, 20)
    for q, cands, t in zip(eps.queries, eps.candidates, eps.targets[:, 0], strict=True):
        alphabet = {groups[int(c)] for c in cands} | {groups[int(q)]}
        assert len(alphabet) == 1 and alphabet != {"C"}
        assert labels[cands[t]] == labels[q] and drawers[cands[t]] != drawers[q]
        assert len(set(labels[cands].tolist())) == 20
    again = make_episodes(groups, labels, drawers, ways=20, trials=50, seed=1)
    assert torch.equal(eps.candidates, again.candidates) and torch.equal(eps.queries, again.queries)
    with pytest.raises(CbirError, match="ways=30 is larger than the classes available.*'A' has 25"):
        make_episodes(groups, labels, drawers, ways=30, trials=5)
    with pytest.raises(CbirError, match="ways=1: an N-way episode needs at least 2 classes"):
        make_episodes(groups, labels, drawers, ways=1, trials=5)  # the metric callback failed on it before


def test_class_batches_drawn_from_few_groups():
    """Groups of 3, 3 and 4 classes, batches of 4 classes: from 2 groups a batch never spans all 3 (uniform
    batches mostly do); from 1 group it is exactly the 4-class group, or needs a second group to fill."""
    images, labels = _images(num_classes=10, per_class=2)
    group_of_class = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    groups = group_of_class[labels]

    def spans(groups_per_batch, count=300):
        data = ClassBatchDataset(
            images,
            labels,
            count,
            0,
            None,
            classes_per_batch=4,
            samples_per_class=2,
            groups=groups if groups_per_batch else None,
            groups_per_batch=groups_per_batch,
        )
        batches = [torch.unique(data[key][1]) for key in range(count)]
        assert all(len(b) == 4 for b in batches)
        return [(set(group_of_class[b].tolist()), set(b.tolist())) for b in batches]

    uniform = spans(None)
    assert sum(len(g) == 3 for g, _ in uniform) > 100
    two = spans(2)
    assert all(len(g) <= 2 for g, _ in two) and {frozenset(g) for g, _ in two if len(g) == 2} == {
        frozenset({0, 1}),
        frozenset({0, 2}),
        frozenset({1, 2}),
    }
    for g, classes in spans(1):
        assert classes == {6, 7, 8, 9} or len(g) == 2, (
            g,
            classes,
        )  # group 2 alone, or a 3-class one + another
    with pytest.raises(ValueError, match="one group id per image"):
        ClassBatchDataset(images, labels, 3, 0, None, classes_per_batch=4, groups_per_batch=2)
    mixed = groups.clone()
    mixed[1] = 1  # the second image of class 0 in another group than the first
    with pytest.raises(ValueError, match="class's group"):
        ClassBatchDataset(images, labels, 3, 0, None, classes_per_batch=4, groups=mixed, groups_per_batch=2)


class _Keys(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, key: int) -> int:
        return key


@pytest.mark.parametrize("workers", [0, 1])
def test_epoch_loader_draws_the_epoch_set_after_its_iterator_was_made(workers):
    """Lightning makes a loader's iterator, then sets the epoch: the batches are the set epoch's."""
    loader = EpochLoader(_Keys(), sampler=EpochSampler(6), batch_size=2, num_workers=workers)
    batches = iter(loader)
    loader.sampler.set_epoch(3)
    assert [b.tolist() for b in batches] == [[18, 19], [20, 21], [22, 23]]


def test_epoch_loader_state_continues_where_it_left_off():
    loader = EpochLoader(_Keys(), sampler=EpochSampler(6), batch_size=2)
    loader.sampler.set_epoch(1)
    batches = iter(loader)
    next(batches)
    assert loader.state_dict() == {"epoch": 1, "batches": 1}
    mid_epoch = EpochLoader(_Keys(), sampler=EpochSampler(6), batch_size=2)
    mid_epoch.load_state_dict(loader.state_dict())
    assert [b.tolist() for b in mid_epoch] == [[8, 9], [10, 11]]
    assert mid_epoch.state_dict() == {"epoch": 1, "batches": 3}
    next_epoch = EpochLoader(_Keys(), sampler=EpochSampler(6), batch_size=2)
    next_epoch.load_state_dict(mid_epoch.state_dict())
    assert [b.tolist() for b in next_epoch][0] == [12, 13]


def test_epoch_loader_leaves_the_global_generator_alone():
    loader = EpochLoader(_Keys(), sampler=EpochSampler(6), batch_size=2)
    before = torch.get_rng_state()
    list(loader)
    assert torch.equal(torch.get_rng_state(), before)
