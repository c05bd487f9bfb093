"""The budget clock: owns the deadline, measures steps and the tail, and decides when the next step no longer fits.

Time runs from ``start`` (the process start for the CLI, so interpreter start-up and the torch import count) to
``start + budget``. The last part of that span is reserved for the *tail*: final evaluation, checkpoint and summary
writes, plus a safety margin. Training owns the *window* before it. The learning rate follows the fraction ``p`` of
the window used so far, and training stops when the next step, predicted from recent steps, would cross into the tail.

The clock is injectable (``now``), so tests drive it with a fake clock; nothing here sleeps or touches torch. An
asynchronous device (CUDA) is timed through a :class:`Timeline` of markers recorded as steps are launched and read
back, a few steps late, when the device has finished them: the host never waits for an empty queue.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol


def process_start_time(now: Callable[[], float] = time.monotonic, pid: int | str = "self") -> float:
    """When process ``pid`` (default: this one) started, on the ``time.monotonic`` scale (Linux: from /proc;
    elsewhere, or when ``pid`` cannot be read: this module's first import)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after the command name
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return now() - max(age, 0.0)
    except (OSError, IndexError, ValueError, AttributeError):
        return _IMPORTED_AT


_IMPORTED_AT = time.monotonic()


# Process exit under a competing load took 2-3x its unloaded time on a 2-core CPU, however slow the steps became: the
# margin grows with the measured load up to this factor.
MAX_MARGIN_LOAD = 2.0


class Timeline(Protocol):
    """When an asynchronous device finishes the steps the host has launched (CUDA events, in ``accel``)."""

    def mark(self) -> None:
        """Record the end of the step just launched."""

    def collect(self, max_unfinished: int) -> list[float]:
        """The finish times (on the clock's scale) of the marks finished since the last call, oldest first; waits
        only while more than ``max_unfinished`` marks are unfinished, so ``collect(0)`` waits for all of them."""


class BudgetClock:
    """Deadline bookkeeping for one run.

    ``tail_s`` is the measured cost of what must happen after training (evaluation, saves); it is refreshed by
    :meth:`measure_tail` whenever a real measurement is available. ``margin_s`` absorbs process exit and jitter.
    Step times are measured between consecutive step ends, so data loading and any per-epoch work are counted. On an
    asynchronous device (``timeline`` given) a step ends when the device finishes it: the clock reads the finish
    times of past steps without waiting, lets at most ``max_lag`` steps be unfinished (the host waits for the oldest
    beyond that, while the device still has the others queued), and predicts the next step's end from the queued
    work, so it is timed truthfully without a sync per step, or any sync at all until training pauses or ends.
    """

    def __init__(
        self,
        budget_s: float,
        start: float | None = None,
        now: Callable[[], float] = time.monotonic,
        margin_s: float = 0.05,
        tail_factor: float = 1.1,
        timeline: Timeline | None = None,
        max_lag: int = 4,
        window: int = 32,
    ) -> None:
        self.budget_s = float(budget_s)
        self.now = now
        self.start = now() if start is None else start
        self.deadline = self.start + self.budget_s
        self.margin_s = margin_s
        self.tail_factor = tail_factor
        self.timeline = timeline
        self.max_lag = max(1, max_lag)
        self.tail_s = 0.0
        self.load = 1.0
        self.reference_step: float | None = None
        self._median = self._latest = self._estimate = 0.0
        self.recent: deque[float] = deque(maxlen=window)
        self.steps = 0
        self.train_s = 0.0
        self.paused_s = 0.0
        self._window_start: float | None = None
        self._last: float | None = None
        self._unfinished = 0
        self.progress_from = 0.0

    # --- the tail --------------------------------------------------------------------------------------------
    def measure_tail(self, seconds: float, load: float | None = None) -> None:
        """Record the predicted cost of evaluation + checkpoint + summary, measured by the trainer. ``load``, when
        known, is how many times slower than at calibration the machine now runs that tail (a competing process):
        the margin for process exit and jitter is scaled by it, up to ``MAX_MARGIN_LOAD``."""
        self.tail_s = max(0.0, float(seconds))
        if load is not None:
            self.load = max(1.0, float(load))

    def slowdown(self) -> float:
        """How much slower the last three steps ran (their median) than the calibration step. When it changes a lot,
        the machine's load changed and the trainer re-times the tail (steps and evaluation do not slow down by the
        same factor: small steps suffer far more from competing threads, so the ratio is a trigger, not a scale).
        Three steps: a real change is seen after two steps, a single slow step is not taken for one."""
        if self.reference_step is None or not self.recent:
            return 1.0
        return self._latest / self.reference_step

    @property
    def reserve_s(self) -> float:
        """Seconds kept free at the end of the budget."""
        return self.tail_s * self.tail_factor + self.margin_s * min(self.load, MAX_MARGIN_LOAD)

    @property
    def window_end(self) -> float:
        return self.deadline - self.reserve_s

    def shorten(self, budget_s: float) -> None:
        """Lower the budget to ``budget_s`` (counted from the same start; never raised): the deadline, the window and
        the progress that the learning rate follows all end sooner."""
        self.budget_s = min(self.budget_s, float(budget_s))
        self.deadline = self.start + self.budget_s

    def elapsed(self) -> float:
        return self.now() - self.start

    def remaining(self) -> float:
        return self.deadline - self.now()

    # --- training ---------------------------------------------------------------------------------------------
    def start_training(self) -> None:
        t = self.now()
        self._window_start = self._last = t

    @property
    def training_started(self) -> float:
        return self.start if self._window_start is None else self._window_start

    def progress(self) -> float:
        """Fraction of the training window used, in [0, 1]: the input of every learning-rate schedule. A resumed run
        starts at ``progress_from`` (where the interrupted one stopped) and reaches 1 at the end of its own window."""
        if self._window_start is None:
            return self.progress_from
        span = self.window_end - self._window_start
        if span <= 0:
            return 1.0
        used = min(1.0, max(0.0, (self.now() - self._window_start) / span))
        return self.progress_from + (1.0 - self.progress_from) * used

    def step_estimate(self) -> float:
        """A cautious prediction of the next step's duration: the larger of the recent median and the last step
        (so a sudden slowdown, e.g. a competing process, is believed at once), and the recent 90th percentile."""
        return self._estimate

    def _observe(self, seconds: float) -> None:
        """Add one step's duration and refresh the cached statistics (once per measurement, not per query)."""
        self.recent.append(seconds)
        ordered = sorted(self.recent)
        self._median = statistics.median(ordered)
        last = list(self.recent)[-3:]
        # with fewer than three steps (the calibration step and the first training step), the faster one stands: a
        # single slow step (a garbage collection, a hiccup) is not taken for a change of load
        self._latest = statistics.median(last) if len(last) == 3 else min(last)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        self._estimate = max(self._median, self.recent[-1], p90)

    def seed_step(self, seconds: float) -> None:
        """Prime the estimate with a measured probe step, so the very first decision is informed; it is also the
        reference against which later slowdowns are judged."""
        self._observe(float(seconds))
        self.reference_step = float(seconds)

    def step_done(self) -> bool:
        """Account one launched step; return True when another step would not fit before the tail."""
        self.steps += 1
        if self.timeline is None:
            return self._finished([self.now()]) + self.step_estimate() > self.window_end
        self.timeline.mark()
        self._unfinished += 1
        self._finished(self.timeline.collect(self.max_lag))
        return self.should_stop()

    def _finished(self, ends: list[float]) -> float:
        """Account steps that ended at ``ends`` (each step runs from the previous end); return the last end."""
        for end in ends:
            if self._last is not None:
                self._observe(end - self._last)
                self.train_s += end - self._last
            self._last = end
        if self.timeline is not None:
            self._unfinished -= len(ends)
        return self._last if self._last is not None else self.now()

    def _settle(self) -> float:
        """Wait for the device to finish its queued work, account the steps among it, and return the time now."""
        if self.timeline is not None:
            self._finished(self.timeline.collect(0))
        return self.now()

    def should_stop(self) -> bool:
        """True when the next step would not fit: it ends one step after the host launches it or after the device
        has worked through the steps still queued, whichever is later."""
        return self.steps_that_fit() < 1

    def steps_that_fit(self) -> int:
        """How many more steps fit before the tail at :meth:`step_estimate` each, counted from when the host launches
        the next one or the device is through the steps still queued, whichever is later."""
        start = self.now()
        if self._unfinished and self._last is not None:
            start = max(start, self._last + self._unfinished * self.step_estimate())
        estimate = self.step_estimate()
        if estimate <= 0:
            return 0 if start > self.window_end else 1
        return max(0, math.floor((self.window_end - start) / estimate))

    def progress_per_step(self) -> float:
        """How far :meth:`progress` moves in the shortest recent step: under torchrun the ranks advance rank 0's
        progress by it between two agreements. A lower bound, so the advanced progress stays behind the clock's and
        the next agreement never moves it (and the learning rate's warm-up) back."""
        if self._window_start is None or self.window_end <= self._window_start or not self.recent:
            return 0.0
        return (1.0 - self.progress_from) * min(self.recent) / (self.window_end - self._window_start)

    def pause(self) -> Callable[[], None]:
        """Exclude a span (periodic evaluation, a save) from step timing; it still counts against the budget.

        Returns the function that ends the pause.
        """
        t0 = self._settle()

        def resume() -> None:
            t1 = self.now()
            self.paused_s += t1 - t0
            self._last = t1

        return resume

    def stop_training(self) -> None:
        self._settle()
