"""Epoch order: a seeded shuffle, restricted to a strategy's subset, cut into batches; the subsets' tally."""
from __future__ import annotations

import pytest
import torch

from timebudget import sampler


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_order_is_a_seeded_permutation() -> None:
    """Every sample once per epoch; the same seed gives the same order, the next epoch a different one."""
    gen = generator()
    first, second = sampler.epoch_order(50, gen), sampler.epoch_order(50, gen)
    assert sorted(first.tolist()) == list(range(50))
    assert not torch.equal(first, second)
    assert torch.equal(first, sampler.epoch_order(50, generator()))


def test_mask_restricts_the_order_without_changing_the_shuffle() -> None:
    """The subset keeps the full shuffle's relative order, so the seed's permutation does not depend on what a
    strategy keeps."""
    mask = torch.arange(40) % 3 == 0
    full = sampler.epoch_order(40, generator(7))
    subset = sampler.epoch_order(40, generator(7), mask)
    assert subset.tolist() == [i for i in full.tolist() if mask[i]]


@pytest.mark.parametrize("mask", [torch.ones(9, dtype=torch.bool), torch.ones(10, dtype=torch.int64)])
def test_mask_must_be_bool_over_all_samples(mask: torch.Tensor) -> None:
    """An index list or a short mask would silently select the wrong samples."""
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(10,\)"):
        sampler.epoch_order(10, generator(), mask)


def test_repeats_give_each_position_so_often_in_a_seeded_shuffle() -> None:
    """A strategy that draws with replacement trains position i ``repeats[i]`` times, mixed through the epoch."""
    repeats = torch.tensor([0, 3, 1, 0, 2, 1, 0, 5])
    order = sampler.epoch_order(8, generator(3), repeats=repeats)
    assert torch.equal(torch.bincount(order, minlength=8), repeats)
    assert torch.equal(order, sampler.epoch_order(8, generator(3), repeats=repeats))
    assert order.tolist() != sorted(order.tolist())


@pytest.mark.parametrize("repeats", [torch.ones(9, dtype=torch.long), torch.ones(10),
                                     -torch.ones(10, dtype=torch.long)])
def test_repeats_must_be_counts_over_all_samples(repeats: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"repeats must be non-negative integers of shape \(10,\)"):
        sampler.epoch_order(10, generator(), repeats=repeats)


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"),
    [
        (10, 4, [4, 4, 2]),  # a trailing half batch is kept
        (9, 4, [4, 4]),  # a trailing quarter batch is dropped
        (3, 4, [3]),  # a single short batch is all there is: kept
        (6, 3, [3, 3]),
        (5, 1, [1] * 5),  # batches of one are full batches, none is dropped
        (7, 2, [2, 2, 2]),  # a trailing single sample would break BatchNorm
    ],
)
def test_batches_drop_only_a_small_trailing_batch(n: int, batch_size: int, sizes: list[int]) -> None:
    order = torch.randperm(n, generator=generator())
    chunks = sampler.batches(order, batch_size)
    assert [len(c) for c in chunks] == sizes
    assert torch.equal(torch.cat(chunks), order[: sum(sizes)])


def test_subset_tally_sums_the_epochs_and_survives_its_state() -> None:
    tally = sampler.SubsetTally()
    assert tally.summary() == {"epochs": 0, "kept_fraction_mean": None, "kept_fraction_min": None,
                               "kept_fraction_max": None, "epochs_by_phase": {}}
    for kept, phase in [(100, "warmup"), (40, "select"), (70, "select")]:
        tally.add(kept, 100, phase)
    assert tally.skipped == 90 and tally.fraction_last == 0.7
    assert tally.summary() == {"epochs": 3, "kept_fraction_mean": pytest.approx(0.7), "kept_fraction_min": 0.4,
                               "kept_fraction_max": 1.0, "epochs_by_phase": {"warmup": 1, "select": 2}}
    restored = sampler.SubsetTally.from_state(tally.state_dict())
    restored.add(50, 100, "select")
    assert tally.summary()["epochs"] == 3  # the restored tally is a copy: adding to it leaves the original alone
    assert restored.summary()["epochs_by_phase"] == {"warmup": 1, "select": 3} and restored.skipped == 140
