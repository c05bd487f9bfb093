"""Near-duplicate detection (``timebudget.dedup``): planted copies are found and counted, distinct rows are not, and
each rule that keeps the run uniform (few features, few copies, too costly) says why."""
from __future__ import annotations

import pytest
import torch

from timebudget import dedup


def copied(items: int, copies: list[int] | int, features: int = 300, noise: float = 0.02, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``items`` distinct random rows in [0, 1], item ``i`` repeated ``copies[i]`` times with a little noise (as
    ``benchmarks/budget_accuracy.py``'s redundant sets); returns the rows, shuffled, and each row's item."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.full((items,), copies) if isinstance(copies, int) else torch.tensor(copies)
    base = torch.rand(items, features, generator=g)
    item = torch.repeat_interleave(torch.arange(items), counts)
    rows = base[item] + noise * torch.randn(len(item), features, generator=g)
    perm = torch.randperm(len(item), generator=g)
    return rows[perm], item[perm]


def test_planted_copies_are_counted_per_row() -> None:
    sizes = [1] * 60 + [2] * 20 + [5] * 10 + [40]  # 190 rows of 91 items
    x, item = copied(91, sizes)
    found = dedup.count_copies(x, seed=0, forced=False, budget=1000.0)
    assert found.counts is not None and found.counts.dtype == torch.long
    assert torch.equal(found.counts, torch.tensor(sizes)[item])  # every row: exactly its item's copies
    assert found.saving == pytest.approx(1 - 91 / 190)
    assert found.summary()["rows_with_copies"] == 190 - 60 and found.summary()["largest_group"] == 40


def test_distinct_rows_have_no_copies_and_the_run_stays_uniform() -> None:
    x, _ = copied(500, 1)
    found = dedup.count_copies(x, seed=0, forced=False, budget=1000.0)
    assert found.counts is None and found.saving == 0.0 and "below 10%" in found.reason
    forced = dedup.count_copies(x, seed=0, forced=True, budget=0.0)
    assert forced.counts is not None and bool((forced.counts == 1).all())


def test_rare_copies_below_the_saving_rule_are_left_alone() -> None:
    x, _ = copied(400, [2] * 20 + [1] * 380)  # 20 surplus rows of 420: about 5% of an epoch
    found = dedup.count_copies(x, seed=0, forced=False, budget=1000.0)
    assert found.counts is None and 0.0 < found.saving < dedup.MIN_SAVING


def test_few_features_are_not_looked_at_unless_forced() -> None:
    x, item = copied(50, 4, features=dedup.MIN_FEATURES - 1)
    found = dedup.count_copies(x, seed=0, forced=False, budget=1000.0)
    assert found.counts is None and f"below {dedup.MIN_FEATURES}" in found.reason
    forced = dedup.count_copies(x, seed=0, forced=True, budget=1000.0)
    assert forced.counts is not None and bool((forced.counts == 4).all())


def test_projecting_that_would_cost_more_than_its_allowance_is_skipped() -> None:
    x, _ = copied(300, 5)
    found = dedup.count_copies(x, seed=0, forced=False, budget=0.0)
    assert found.counts is None and "projecting all rows would take about" in found.reason
    assert dedup.count_copies(x, seed=0, forced=True, budget=0.0).counts is not None  # forced: whatever it costs


def test_counting_that_would_cost_more_than_its_allowance_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = copied(300, 5)
    project = dedup.project
    monkeypatch.setattr(dedup, "project", lambda flat, directions, allowance: project(flat, directions, None))
    found = dedup.count_copies(x, seed=0, forced=False, budget=0.0)
    assert found.counts is None and "counting all rows would take about" in found.reason and found.saving > 0.5


@pytest.mark.parametrize("saving, share", [(0.0, dedup.COST_SHARE), (0.1, dedup.COST_SHARE),
                                           (0.75, 0.75 * dedup.PAYBACK), (0.9, 0.9 * dedup.PAYBACK)])
def test_counting_may_take_more_of_the_budget_the_more_copies_the_screen_found(saving: float, share: float) -> None:
    assert dedup.count_allowance(100.0, saving) == pytest.approx(100.0 * share)
    assert dedup.count_allowance(0.0, saving) == 0.0


def test_a_heavily_copied_set_is_counted_where_the_bare_cost_share_would_not_allow_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock (each reading 1 ms after the last) makes the screen predict ``(n + 1) / (2 SCREEN)`` ms for
    counting each pair once: 2.3 ms for 1,200 rows, above 5% of a 0.04 s budget (2 ms), below a quarter of what
    uniform training would spend on its 80% surplus copies (8 ms)."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(dedup.time, "perf_counter", lambda: next(ticks) * 1e-3)
    x, _ = copied(240, 5)
    budget = 0.04
    assert dedup.COST_SHARE * budget < 1e-3 * (len(x) + 1) / (2 * dedup.SCREEN) < dedup.count_allowance(budget, 0.8)
    found = dedup.count_copies(x, seed=0, forced=False, budget=budget)
    assert found.counts is not None and bool((found.counts == 5).all()), found.reason
    monkeypatch.setattr(dedup, "PAYBACK", 0.0)  # the bare cost share: not counted
    found = dedup.count_copies(x, seed=0, forced=False, budget=budget)
    assert found.counts is None and "counting all rows would take about" in found.reason


def test_the_screen_predicts_the_count_of_each_pair_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fake clock the screen of 256 rows takes 1 ms: counting 1,200 rows compares about 1,200 * 1,201 / 2
    pairs, 2.3 ms, which a 3 ms allowance admits (every pair twice would be 4.7 ms); a 2 ms allowance does not."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(dedup.time, "perf_counter", lambda: next(ticks) * 1e-3)
    project = dedup.project
    monkeypatch.setattr(dedup, "project", lambda flat, directions, allowance: project(flat, directions, None))
    x, _ = copied(240, 5)  # saving 0.8: the allowance is a fifth of the budget
    found = dedup.count_copies(x, seed=0, forced=False, budget=0.015)
    assert found.counts is not None and bool((found.counts == 5).all()), found.reason
    found = dedup.count_copies(x, seed=0, forced=False, budget=0.010)
    assert found.counts is None and "counting all rows would take about" in found.reason


def test_the_projection_in_chunks_is_the_centred_product(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "PROJECT_ROWS", 7)
    x = torch.rand(30, 12, generator=torch.Generator().manual_seed(0))
    directions = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    points, predicted = dedup.project(x, directions, None)
    assert points is not None and predicted == 0.0
    assert torch.allclose(points, (x - x.mean(0)) @ directions, atol=1e-5)


def test_images_count_as_their_flattened_pixels() -> None:
    x, item = copied(30, 3, features=3 * 16 * 16)
    found = dedup.count_copies(x.view(-1, 3, 16, 16), seed=1, forced=False, budget=1000.0)
    assert found.counts is not None and bool((found.counts == 3).all())


def test_identical_rows_and_tiny_sets_say_why() -> None:
    assert "every row is the same" in dedup.count_copies(torch.ones(10, 300), 0, False, 1000.0).reason
    assert dedup.count_copies(torch.ones(1, 300), 0, True, 1000.0).counts is None


# a row per block; blocks growing as the rows left shrink; one block
@pytest.mark.parametrize("block", [1, 50, 1 << 20])
def test_counting_each_pair_once_counts_as_comparing_every_row_with_every_row(monkeypatch: pytest.MonkeyPatch,
                                                                              block: int) -> None:
    monkeypatch.setattr(dedup, "BLOCK", block)
    g = torch.Generator().manual_seed(3)
    items = torch.randn(40, 8, generator=g)
    points = torch.cat([items.repeat(3, 1) + 0.05 * torch.randn(120, 8, generator=g), torch.randn(17, 8, generator=g)])
    counts = dedup._count_all(points, 0.5)
    assert counts.dtype == torch.long and int(counts.max()) >= 3  # the copies are within the radius of each other
    assert torch.equal(counts, dedup._within(points, points, 0.5))
    assert torch.equal(counts, ((points[:, None] - points[None]).norm(dim=2) < 0.5).sum(1))
