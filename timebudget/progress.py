"""The live view of a run in the terminal: a tqdm bar of the budget's seconds that moves at least every ``interval``.

The loop calls :meth:`Progress.tick` after every step; it only compares the clock with the next refresh time, so the
view costs nothing per step and never waits for the device. At a refresh the view reads what the run reports through
its ``status`` function (learning rate, samples, epoch, kept share) and the newest loss already on the host: each
refresh starts a non-blocking copy of the latest batch's mean loss and the next refresh reads it, if the device has
delivered it by then (on the CPU it always has), so the loss shown is about one refresh old and nothing is ever
synchronised for it. Updates are driven by time, not by the step log, so short epochs and long ones move alike.

Where no step runs for a while (start-up, calibration, an evaluation, the tail), a background thread redraws the
line once a refresh is overdue; it never touches the device, so the loss it shows is the last one read.

Silent with ``--quiet`` and when the stream is not a terminal (a log file, a pipe, a CI job).
"""
from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import torch

from .accel import HostCopy

PHASES = ("start-up", "calibration", "training", "tail")
BAR_FORMAT = "{desc} |{bar}| "  # the status text follows


class Clock(Protocol):
    """What the view reads from the budget clock (:class:`timebudget.clock.BudgetClock`)."""

    budget_s: float
    now: Callable[[], float]

    def elapsed(self) -> float: ...

    def remaining(self) -> float: ...


@dataclass
class Status:
    """What the run reports at a refresh (read only then, never per step)."""

    lr: float | None = None
    samples: int = 0
    epoch: int | None = None
    kept_fraction: float | None = None


class Progress:
    """The live view; a no-op unless ``stream`` (default: stdout) is a terminal and ``quiet`` is off.

    Use it as a context manager: on leaving, the bar is closed and stays on screen after a finished run, and is
    cleared when an error leaves (so the error line stands alone).
    """

    def __init__(self, clock: Clock, quiet: bool = False, stream: TextIO | None = None, interval: float = 0.5,
                 background: bool = True) -> None:
        self.clock, self.now, self.interval = clock, clock.now, interval
        stream = sys.stdout if stream is None else stream
        self.status: Callable[[], Status] = Status
        self.phase_name = PHASES[0]
        self.loss: float | None = None
        self.rate: float | None = None
        self._pending: HostCopy | None = None  # the latest loss on its way to the host
        self._last: tuple[float, int] | None = None  # (time, samples) at the previous refresh, for samples/s
        self.next_refresh = self.next_draw = math.inf  # the loop's next refresh; the next frame due
        self.bar: Any = None
        self._lock = threading.Lock()  # the loop's refreshes and the background thread's draw one at a time
        self._closed = threading.Event()
        if quiet or not _is_terminal(stream):
            return
        from tqdm import tqdm

        elapsed = self._elapsed()
        desc, bar_format = self._text(elapsed, Status())
        self.bar = tqdm(total=round(clock.budget_s, 1), initial=round(elapsed, 1), file=stream, dynamic_ncols=True,
                        leave=True, desc=desc, bar_format=bar_format)  # tqdm draws this first frame
        self.next_refresh = self.next_draw = self.now() + interval
        if background:
            threading.Thread(target=self._watch, name="timebudget-progress", daemon=True).start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(keep=exc_type is None)

    def phase(self, name: str, status: Callable[[], Status] | None = None) -> None:
        """Enter a phase of the budget (one of :data:`PHASES`), optionally with the run's status function."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; expected one of {PHASES}")
        self.phase_name = name
        if status is not None:
            self.status = status
        self._last = None  # samples/s is measured within the training phase only
        self.refresh()

    def tick(self, losses: torch.Tensor | None = None) -> None:
        """Called after every step with the step's per-sample losses (left on the device); refreshes when due."""
        if self.now() >= self.next_refresh:
            self.refresh(losses)

    def refresh(self, losses: torch.Tensor | None = None) -> None:
        """Redraw now, and start the copy of ``losses``' mean that the next refresh shows (the loop's thread)."""
        if self.bar is None:
            return
        self.next_refresh = self.now() + self.interval
        self._take_loss(losses)
        if self.phase_name == "training":  # samples/s between the loop's refreshes (pauses included)
            t, samples = self.now(), self.status().samples
            if self._last is not None and t > self._last[0]:
                self.rate = (samples - self._last[1]) / (t - self._last[0])
            self._last = (t, samples)
        self._draw()

    def _watch(self) -> None:
        """The background thread: redraw when no frame came in time (nothing ticks outside training steps). It
        only draws: the loop's own refreshes, on their own schedule, read the loss and measure samples/s."""
        while not self._closed.wait(self.interval / 4):
            if self.now() >= self.next_draw:
                self._draw()

    def _draw(self) -> None:
        with self._lock:
            if self.bar is not None:
                self._draw_frame()

    def _draw_frame(self) -> None:
        self.next_draw = self.now() + self.interval
        elapsed = self._elapsed()
        self.bar.n = round(elapsed, 1)
        self.bar.desc, self.bar.bar_format = self._text(elapsed, self.status())
        self.bar.refresh()

    def _elapsed(self) -> float:
        return min(max(self.clock.elapsed(), 0.0), self.clock.budget_s)

    def _text(self, elapsed: float, status: Status) -> tuple[str, str]:
        """The phase before the bar, and tqdm's format of the bar followed by the status text."""
        text = self.describe(elapsed, status)
        return f"{self.phase_name:<11}", BAR_FORMAT + text.replace("{", "{{").replace("}", "}}")  # braces: tqdm's

    def describe(self, elapsed: float, status: Status) -> str:
        """The text beside the bar."""
        fields = [f"{elapsed:.1f}/{self.clock.budget_s:g}s", f"left {max(self.clock.remaining(), 0.0):.1f}s"]
        if status.lr is not None:
            fields.append(f"lr {status.lr:.3g}")
        if self.loss is not None:
            fields.append(f"loss {self.loss:.4g}")
        if self.rate is not None:
            fields.append(f"{self.rate:,.0f} samples/s")
        if status.epoch is not None:
            fields.append(f"epoch {status.epoch}")
        if status.kept_fraction is not None:
            fields.append(f"kept {status.kept_fraction:.0%}")
        return "  ".join(fields)

    def _take_loss(self, losses: torch.Tensor | None) -> None:
        """Read the copy started at the previous refresh if it has arrived; start a new one from ``losses``."""
        if self._pending is not None and self._pending.ready():
            self.loss = self._pending.get()
            self._pending = None
        if losses is not None and self._pending is None and losses.numel():
            self._pending = HostCopy(losses.detach().float().mean())

    def close(self, keep: bool = True) -> None:
        """Draw the last state and close the bar (left on screen if ``keep``, cleared otherwise)."""
        self._closed.set()
        with self._lock:
            if self.bar is None:
                return
            if keep:
                self._draw_frame()
            self.bar.leave = keep
            self.bar.close()
            self.bar = None
            self.next_refresh = self.next_draw = math.inf


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
