"""Learning-rate schedules: by budget fraction (driven by the budget clock on a fake clock) and by step count."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from timebudget import schedules
from timebudget.clock import BudgetClock

from conftest import FakeClock

BASE_LR = 0.1
END = 200  # trace index of the window's end (or of total_steps); traces run 20% past it
NAMES = ("linear", "cosine", "step", "constant")


def optimizer(*lrs: float) -> torch.optim.SGD:
    """An optimizer with one parameter group per learning rate."""
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def time_trace(name: str, warmup: float) -> list[float]:
    """The lr a time schedule sets at END + 40 evenly spaced moments of a run, as the trainer drives it: the fraction
    comes from a budget clock, so the window's end is where the clock puts it, not a number the test picks."""
    fake = FakeClock()
    clock = BudgetClock(10.0, now=fake, margin_s=0.05)
    clock.measure_tail(1.0)
    clock.start_training()
    start, end = fake.t, clock.window_end
    opt = optimizer(BASE_LR)
    schedule = schedules.TimeSchedule(opt, BASE_LR, schedules.build(name, warmup))
    lrs = []
    for k in range(END + 41):
        fake.t = start + (end - start) * k / END
        lrs.append(schedule.apply(clock.progress()))
        assert opt.param_groups[0]["lr"] == lrs[-1]
    return lrs


def step_trace() -> list[float]:
    """The lr of the step-count ``LinearLR`` before each of END + 40 steps."""
    opt = optimizer(BASE_LR)
    schedule = schedules.LinearLR(opt, total_steps=END)
    lrs = [schedule.get_last_lr()[0]]
    for _ in range(END + 40):
        schedule.step()
        lrs.append(schedule.get_last_lr()[0])
    return lrs


@pytest.mark.parametrize(
    "trace",
    [
        pytest.param(lambda: time_trace("linear", 0.0), id="linear"),
        pytest.param(lambda: time_trace("linear", 0.1), id="linear-warmup"),
        pytest.param(lambda: time_trace("cosine", 0.0), id="cosine"),
        pytest.param(lambda: time_trace("cosine", 0.1), id="cosine-warmup"),
        pytest.param(step_trace, id="LinearLR"),
    ],
)
def test_decaying_schedules_reach_exactly_zero_and_never_go_negative(trace: Callable[[], list[float]]) -> None:
    """Every annealing schedule peaks at the base lr, only decays after the peak, is exactly 0 at the end of its
    horizon and stays 0 (never negative) past it, whatever drives it."""
    lrs = trace()
    assert min(lrs) >= 0.0
    assert max(lrs) == pytest.approx(BASE_LR)
    peak = lrs.index(max(lrs))
    assert all(later <= earlier for earlier, later in zip(lrs[peak:], lrs[peak + 1 :]))
    assert lrs[END] == 0.0
    assert set(lrs[END:]) == {0.0}
    assert lrs[END - 1] > 0.0


@pytest.mark.parametrize("warmup", [0.0, 0.2])
@pytest.mark.parametrize("name", NAMES)
def test_every_schedule_is_a_multiplier_in_zero_one(name: str, warmup: float) -> None:
    """A schedule scales the base lr: never negative and never above it, at any fraction of the budget."""
    schedule = schedules.build(name, warmup)
    values = [schedule(k / 1000) for k in range(1001)]
    assert min(values) >= 0.0
    assert max(values) == pytest.approx(1.0)


@pytest.mark.parametrize("name", NAMES)
def test_warmup_ramps_linearly_from_zero_to_the_peak(name: str) -> None:
    """Warm-up starts at 0 (no large first steps) and hands over to the schedule at full strength."""
    schedule = schedules.build(name, warmup=0.2)
    assert schedule(0.0) == 0.0
    assert schedule(0.1) == pytest.approx(0.5)
    assert schedule(0.2) == pytest.approx(1.0)


def test_step_schedule_drops_tenfold_at_each_milestone() -> None:
    """Step decay is placed by time: x0.1 from each milestone fraction on."""
    schedule = schedules.build("step", milestones=(0.5, 0.75))
    assert [schedule(p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_constant_schedule_never_decays() -> None:
    """The baseline of a plain time-capped loop: full lr until the end."""
    assert {schedules.build("constant")(k / 10) for k in range(11)} == {1.0}


def test_time_schedule_clamps_the_fraction_and_sets_every_group() -> None:
    """A fraction past either end (a late step, a clock read before training) must not give a negative or extra
    large lr, and every parameter group follows its own base."""
    opt = optimizer(BASE_LR, BASE_LR)
    schedule = schedules.TimeSchedule(opt, BASE_LR, schedules.build("linear", warmup=0.1))
    assert schedule.apply(1.5) == 0.0
    assert schedule.apply(-0.5) == 0.0
    assert schedule.apply(0.55) == pytest.approx(BASE_LR / 2)
    assert [group["lr"] for group in opt.param_groups] == pytest.approx([BASE_LR / 2] * 2)


def test_linear_lr_decays_each_group_from_its_own_base() -> None:
    """``LinearLR`` is Li et al.'s schedule by step count: base * (1 - k / total_steps), per parameter group."""
    opt = optimizer(0.1, 0.02)
    schedule = schedules.LinearLR(opt, total_steps=10)
    for _ in range(4):
        schedule.step()
    assert schedule.get_last_lr() == pytest.approx([0.06, 0.012])


def test_linear_lr_resumes_from_its_state() -> None:
    """A resumed run continues the decay where it stopped instead of restarting at the base lr."""
    first = schedules.LinearLR(optimizer(BASE_LR), total_steps=10)
    for _ in range(3):
        first.step()
    resumed = schedules.LinearLR(optimizer(first.get_last_lr()[0]), total_steps=99)
    resumed.load_state_dict(first.state_dict())
    first.step()
    resumed.step()
    assert resumed.get_last_lr() == pytest.approx(first.get_last_lr())
    assert resumed.get_last_lr() == pytest.approx([BASE_LR * 0.6])


@pytest.mark.parametrize("total_steps", [0, -5])
def test_linear_lr_needs_a_positive_step_count(total_steps: int) -> None:
    """Zero or negative steps would divide by zero or run the schedule backwards."""
    with pytest.raises(ValueError, match="total_steps"):
        schedules.LinearLR(optimizer(BASE_LR), total_steps)


@pytest.mark.parametrize(
    ("step_s", "window_s", "expected"),
    [
        pytest.param(0.001, 100.0, 0.05, id="long-window-5pc"),  # 20 steps = 0.02 s: the 5% floor
        pytest.param(0.1, 20.0, 0.10, id="20-steps"),  # 20 steps = 2 s = 10% of the window
        pytest.param(0.1, 5.0, 0.15, id="short-window-capped"),  # 20 steps would be 40%: capped at 15%
        pytest.param(0.1, 0.0, 0.15, id="no-window"),
    ],
)
def test_default_warmup_is_five_percent_or_twenty_steps_at_most_fifteen(
    step_s: float, window_s: float, expected: float
) -> None:
    assert schedules.default_warmup(step_s, window_s) == pytest.approx(expected)


def test_default_warmup_schedule_shape_on_a_fake_clock(fake_clock: FakeClock) -> None:
    """Driven by a budget clock's progress: 0 at the start, the peak at the end of the warm-up, then the linear
    decay to exactly 0 at the deadline."""
    clock = BudgetClock(10.0, start=fake_clock(), now=fake_clock, margin_s=0.0)
    clock.measure_tail(0.0)
    warmup = schedules.default_warmup(0.05, 10.0)  # 20 steps = 1 s = 10%
    opt = optimizer(BASE_LR)
    schedule = schedules.TimeSchedule(opt, BASE_LR, schedules.build("linear", warmup))
    clock.start_training()
    trace = []
    for _ in range(41):
        trace.append(schedule.apply(clock.progress()))
        fake_clock.advance(0.25)
    assert warmup == pytest.approx(0.1)
    assert trace[0] == 0.0
    assert trace[2] == pytest.approx(BASE_LR * 0.5)  # half-way through the warm-up
    assert trace[4] == pytest.approx(BASE_LR)  # its end: the peak
    assert trace[:5] == sorted(trace[:5]) and trace[4:] == sorted(trace[4:], reverse=True) and trace[-1] == 0.0
