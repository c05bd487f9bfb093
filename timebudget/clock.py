"""The budget clock: owns the deadline, measures steps and the tail, and decides when the next step no longer fits.

Time runs from ``start`` (the process start for the CLI, so interpreter start-up and the torch import count) to
``start + budget``. The last part of that span is reserved for the *tail*: final evaluation, checkpoint and summary
writes, plus a safety margin. Training owns the *window* before it. The learning rate follows the fraction ``p`` of
the window used so far, and training stops when the next step, predicted from recent steps, would cross into the tail.

The clock is injectable (``now``), so tests drive it with a fake clock; nothing here sleeps or touches torch.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable


def process_start_time(now: Callable[[], float] = time.monotonic) -> float:
    """When this process started, on the ``time.monotonic`` scale (Linux: from /proc; elsewhere: first import)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after the command name
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return now() - max(age, 0.0)
    except (OSError, IndexError, ValueError, AttributeError):
        return _IMPORTED_AT


_IMPORTED_AT = time.monotonic()


class BudgetClock:
    """Deadline bookkeeping for one run.

    ``tail_s`` is the measured cost of what must happen after training (evaluation, saves); it is refreshed by
    :meth:`measure_tail` whenever a real measurement is available. ``margin_s`` absorbs process exit and jitter.
    Step times are measured between consecutive :meth:`step_done` calls, so data loading and any per-epoch work
    are counted. ``sync`` (e.g. ``torch.cuda.synchronize``) is called only when a measurement needs it: every
    ``sync_every`` steps, and every step once the deadline is near, so asynchronous devices are timed truthfully
    without a sync per step.
    """

    def __init__(
        self,
        budget_s: float,
        start: float | None = None,
        now: Callable[[], float] = time.monotonic,
        margin_s: float = 0.05,
        tail_factor: float = 1.1,
        sync: Callable[[], None] | None = None,
        sync_every: int = 1,
        window: int = 32,
    ) -> None:
        self.budget_s = float(budget_s)
        self.now = now
        self.start = now() if start is None else start
        self.deadline = self.start + self.budget_s
        self.margin_s = margin_s
        self.tail_factor = tail_factor
        self.sync = sync
        self.sync_every = max(1, sync_every)
        self.tail_s = 0.0
        self.reference_step: float | None = None
        self._median = self._latest = self._estimate = 0.0
        self.recent: deque[float] = deque(maxlen=window)
        self.steps = 0
        self.train_s = 0.0
        self.paused_s = 0.0
        self._window_start: float | None = None
        self._last: float | None = None
        self._pending = 0

    # --- the tail --------------------------------------------------------------------------------------------
    def measure_tail(self, seconds: float) -> None:
        """Record the predicted cost of evaluation + checkpoint + summary, measured by the trainer."""
        self.tail_s = max(0.0, float(seconds))

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
        return self.tail_s * self.tail_factor + self.margin_s

    @property
    def window_end(self) -> float:
        return self.deadline - self.reserve_s

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
        """Fraction of the training window used, in [0, 1]: the input of every learning-rate schedule."""
        if self._window_start is None:
            return 0.0
        span = self.window_end - self._window_start
        if span <= 0:
            return 1.0
        return min(1.0, max(0.0, (self.now() - self._window_start) / span))

    def step_estimate(self) -> float:
        """A cautious prediction of the next step's duration: the larger of the recent median and the last step
        (so a sudden slowdown, e.g. a competing process, is believed at once), and the recent 90th percentile."""
        return self._estimate

    def _observe(self, per_step: float, count: int = 1) -> None:
        """Add step durations and refresh the cached statistics (once per measurement, not per query)."""
        for _ in range(min(count, self.recent.maxlen or 1)):
            self.recent.append(per_step)
        ordered = sorted(self.recent)
        self._median = statistics.median(ordered)
        self._latest = statistics.median(list(self.recent)[-3:])
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        self._estimate = max(self._median, self.recent[-1], p90)

    def seed_step(self, seconds: float) -> None:
        """Prime the estimate with a measured probe step, so the very first decision is informed; it is also the
        reference against which later slowdowns are judged."""
        self._observe(float(seconds))
        self.reference_step = float(seconds)

    def near_deadline(self) -> bool:
        return self.window_end - self.now() < 20 * max(self.step_estimate(), 1e-3) * self.sync_every

    def step_done(self) -> bool:
        """Account one finished step; return True when another step would not fit before the tail."""
        self._pending += 1
        self.steps += 1
        if self._pending < self.sync_every and not self.near_deadline():
            return False
        return self._settle() + self.step_estimate() > self.window_end

    def _settle(self) -> float:
        """Wait for the device (if steps are pending), account the pending steps' time, and return the time now."""
        if self._pending and self.sync is not None:
            self.sync()
        t = self.now()
        if self._pending and self._last is not None:
            self._observe((t - self._last) / self._pending, self._pending)
            self.train_s += t - self._last
            self._last = t
            self._pending = 0
        return t

    def should_stop(self) -> bool:
        """True when the next step would not fit (checked without accounting a step, e.g. at an epoch boundary)."""
        return self.now() + self.step_estimate() > self.window_end

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
