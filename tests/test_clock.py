"""The budget clock, driven by a fake clock: every decision is checked exactly, nothing sleeps or measures real time."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

import pytest

from timebudget.clock import BudgetClock, process_start_time

from conftest import FakeClock

EPS = 1e-9  # float rounding of summed fake durations


def started_clock(
    fake: FakeClock, budget: float = 10.0, tail: float = 1.0, step: float = 0.01, **kwargs: float
) -> BudgetClock:
    """A clock as the trainer leaves it after calibration: the tail measured, one step seeded, training started."""
    clock = BudgetClock(budget, now=fake, margin_s=0.05, **kwargs)
    clock.measure_tail(tail)
    clock.seed_step(step)
    clock.start_training()
    return clock


def train_until_stop(clock: BudgetClock, fake: FakeClock, duration: Callable[[int], float]) -> int:
    """Take steps of ``duration(i)`` seconds until the clock says the next one would not fit; return the count."""
    steps = 0
    while True:
        fake.advance(duration(steps))
        steps += 1
        if clock.step_done():
            return steps


def test_progress_runs_from_zero_to_one_over_the_window(fake_clock: FakeClock) -> None:
    """The schedules read p: it must start at 0, grow with time and be exactly 1 (not more) from the window's end."""
    clock = BudgetClock(10.0, now=fake_clock, margin_s=0.05)
    clock.measure_tail(1.0)
    fake_clock.advance(2.0)  # start-up before training
    assert clock.progress() == 0.0
    clock.start_training()
    span = clock.window_end - fake_clock.t
    fake_clock.advance(span / 2)
    assert clock.progress() == pytest.approx(0.5)
    fake_clock.t = clock.window_end
    assert clock.progress() == 1.0
    fake_clock.advance(5.0)
    assert clock.progress() == 1.0


@pytest.mark.parametrize("budget", [5.0, 60.0])
@pytest.mark.parametrize("tail", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("step", [0.001, 0.01, 0.25])
def test_stop_leaves_room_for_the_tail_and_wastes_no_step(
    fake_clock: FakeClock, budget: float, tail: float, step: float
) -> None:
    """The last step ends before the reserve, the measured tail fits before the deadline, and one more step would
    not have fitted (so the budget is used, not left idle)."""
    clock = started_clock(fake_clock, budget, tail, step)
    steps = train_until_stop(clock, fake_clock, lambda i: step)
    assert steps > 1
    assert fake_clock.t <= clock.window_end + EPS
    assert fake_clock.t + tail <= clock.deadline - clock.margin_s + EPS
    assert fake_clock.t + step > clock.window_end


def test_sudden_slowdown_is_believed_at_once(fake_clock: FakeClock) -> None:
    """A competing process halves the speed from 60% of the budget on: the estimate must follow at once, so the last
    (slow) step still ends before the tail, and no more than one slow step's worth of the window is left idle."""
    clock = started_clock(fake_clock)
    slow_from = clock.start + 0.6 * clock.budget_s
    train_until_stop(clock, fake_clock, lambda i: 0.02 if fake_clock.t >= slow_from else 0.01)
    assert clock.step_estimate() == pytest.approx(0.02)
    assert fake_clock.t <= clock.window_end + EPS
    assert fake_clock.t + 0.02 > clock.window_end


def test_one_slow_step_near_the_end_is_believed_at_once(fake_clock: FakeClock) -> None:
    """A step that suddenly takes 20x as long shortly before the window's end must stop training right after it:
    the clock cannot know the next step will be fast again, and guessing wrong would overshoot."""
    clock = started_clock(fake_clock)
    spike_at: list[int] = []

    def duration(i: int) -> float:
        if not spike_at and clock.window_end - fake_clock.t <= 0.35:
            spike_at.append(i)
            return 0.2
        return 0.01

    steps = train_until_stop(clock, fake_clock, duration)
    assert spike_at and steps == spike_at[0] + 1
    assert fake_clock.t <= clock.window_end


def test_a_single_slow_step_is_no_load_change_even_the_first(fake_clock: FakeClock) -> None:
    """The slowdown that triggers re-timing the tail is the median of the last three steps, and with fewer than three
    (the calibration step and the first training step) the faster one: one step caught by a garbage collection is not
    a change of load, two in a row are."""
    clock = started_clock(fake_clock, step=0.01)
    assert clock.slowdown() == 1.0
    fake_clock.advance(0.5)  # the first training step, 50x slower
    clock.step_done()
    assert clock.slowdown() == pytest.approx(1.0)
    fake_clock.advance(0.5)
    clock.step_done()
    assert clock.slowdown() == pytest.approx(50.0)
    for _ in range(2):
        fake_clock.advance(0.01)
        clock.step_done()
    assert clock.slowdown() == pytest.approx(1.0)


def test_progress_never_goes_back_when_a_slowdown_passes(fake_clock: FakeClock) -> None:
    """p drives the learning rate: a linear decay must never turn into a rise because the machine was busy a while."""
    clock = started_clock(fake_clock)
    busy = (clock.start + 3.0, clock.start + 4.0)
    seen: list[float] = []

    def duration(i: int) -> float:
        seen.append(clock.progress())
        return 0.05 if busy[0] <= fake_clock.t < busy[1] else 0.01

    train_until_stop(clock, fake_clock, duration)
    drops = [earlier - later for earlier, later in zip(seen, seen[1:]) if later < earlier]
    assert not drops, f"progress fell {len(drops)} times, by up to {max(drops):.3f}"


def test_one_hiccup_on_the_first_step_does_not_end_the_run(fake_clock: FakeClock) -> None:
    """A pause of the whole process (page faults, another process, a GC) on the first step says nothing about the
    tail: the run must go on and use its budget once steps are fast again."""
    clock = BudgetClock(4.0, now=fake_clock, margin_s=0.05)
    clock.measure_tail(0.015)
    clock.seed_step(0.001)
    fake_clock.advance(0.5)  # start-up, which counts against the budget
    clock.start_training()
    train_until_stop(clock, fake_clock, lambda i: 0.35 if i == 0 else 0.001)
    assert fake_clock.t - clock.start > 0.9 * clock.budget_s


class AsyncDevice:
    """A CUDA-like device and its timeline: launching a step costs the host ``launch`` seconds and queues ``work``
    seconds of device time. A step's end is reported once the device has reached it; waiting for one moves the host
    clock there. Timing the host alone would see launch times only."""

    def __init__(self, clock: FakeClock, launch: float, work: float) -> None:
        self.clock, self.launch, self.work = clock, launch, work
        self.busy_until = clock.t
        self.ends: deque[float] = deque()
        self.most_queued = self.drains = self.waits_with_queue_empty = 0

    def step(self) -> float:
        self.busy_until = max(self.busy_until, self.clock.t + self.launch) + self.work  # runs once launched
        return self.launch

    def mark(self) -> None:
        self.ends.append(self.busy_until)
        self.most_queued = max(self.most_queued, len(self.ends))

    def collect(self, max_unfinished: int) -> list[float]:
        self.drains += max_unfinished == 0
        finished = []
        while self.ends and (len(self.ends) > max_unfinished or self.ends[0] <= self.clock.t):
            end = self.ends.popleft()
            if end > self.clock.t:
                self.waits_with_queue_empty += not self.ends
                self.clock.t = end
            finished.append(end)
        return finished


@pytest.mark.parametrize(("launch", "work"), [(0.001, 0.02), (0.0001, 0.25), (0.02, 0.001)])
def test_an_async_device_is_timed_by_step_ends_without_draining_its_queue(
    fake_clock: FakeClock, launch: float, work: float
) -> None:
    """Step times are the device's (or the host's, when launching is slower), the host never waits for an empty
    queue nor runs more than ``max_lag`` steps ahead, all queued work is done before the window's end, and the run
    stops with less than one step of the window left idle."""
    device = AsyncDevice(fake_clock, launch, work)
    clock = started_clock(fake_clock, budget=30.0, step=max(launch, work), timeline=device)
    start = fake_clock.t
    steps = train_until_stop(clock, fake_clock, lambda i: device.step())
    assert device.drains == 0 and device.waits_with_queue_empty == 0
    clock.stop_training()
    assert device.drains == 1 and fake_clock.t >= device.busy_until
    assert device.most_queued <= clock.max_lag + 1
    assert clock.step_estimate() == pytest.approx(max(launch, work))
    assert clock.window_end - clock.step_estimate() < fake_clock.t <= clock.window_end + EPS
    assert clock.train_s == pytest.approx(fake_clock.t - start)
    assert steps == pytest.approx(clock.train_s / max(launch, work), abs=1.5)


def test_pause_excludes_an_evaluation_from_step_time_but_not_from_the_budget(fake_clock: FakeClock) -> None:
    """A periodic evaluation is no training step (it must not inflate the estimate) but its seconds are spent."""
    clock = started_clock(fake_clock)
    start = fake_clock.t
    for _ in range(10):
        fake_clock.advance(0.01)
        clock.step_done()
    resume = clock.pause()
    fake_clock.advance(2.0)
    resume()
    fake_clock.advance(0.01)
    clock.step_done()
    assert clock.step_estimate() == pytest.approx(0.01)
    assert clock.paused_s == pytest.approx(2.0)
    assert clock.train_s == pytest.approx(0.11)
    assert clock.progress() == pytest.approx((fake_clock.t - start) / (clock.window_end - start))


def test_no_step_is_started_when_none_fits(fake_clock: FakeClock) -> None:
    """At an epoch boundary the clock is asked without a step: a window shorter than one step means stop now."""
    clock = started_clock(fake_clock, budget=1.0, tail=0.8, step=0.2)
    assert clock.should_stop()
    roomy = started_clock(FakeClock(), budget=10.0, tail=0.8, step=0.2)
    assert not roomy.should_stop()


def test_stop_training_waits_for_queued_steps_and_counts_them(fake_clock: FakeClock) -> None:
    """Steps the device has not finished when training ends are waited for and count as training time."""
    device = AsyncDevice(fake_clock, launch=0.0, work=0.1)
    clock = started_clock(fake_clock, budget=100.0, step=0.1, timeline=device)
    start = fake_clock.t
    for _ in range(3):
        fake_clock.advance(device.step())
        assert not clock.step_done()
    assert fake_clock.t == start
    clock.stop_training()
    assert fake_clock.t == pytest.approx(start + 0.3)
    assert clock.train_s == pytest.approx(0.3)


def test_process_start_is_before_now(fake_clock: FakeClock) -> None:
    """The CLI's budget starts at process start, which lies in the past of any clock reading."""
    started = process_start_time(now=fake_clock)
    assert fake_clock.t - 24 * 3600 < started <= fake_clock.t


def test_margin_grows_with_the_measured_load_and_keeps_it_until_measured_again(fake_clock: FakeClock) -> None:
    """Under a competing load process exit and jitter slow down with the tail, so the margin scales with it, up to
    2x; a tail measured without a load figure (a periodic evaluation) keeps the last one."""
    clock = started_clock(fake_clock, tail=1.0)
    assert clock.reserve_s == pytest.approx(1.1 + 0.05)
    clock.measure_tail(2.0, load=1.5)
    assert clock.reserve_s == pytest.approx(2.2 + 0.075)
    clock.measure_tail(2.5)
    assert clock.reserve_s == pytest.approx(2.75 + 0.075)
    clock.measure_tail(2.0, load=30.0)  # exit does not slow down like tiny steps: the margin grows at most 2x
    assert clock.reserve_s == pytest.approx(2.2 + 0.1)
    clock.measure_tail(1.0, load=0.5)  # faster than at calibration: never less than the calibrated margin
    assert clock.reserve_s == pytest.approx(1.1 + 0.05)
