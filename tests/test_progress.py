"""The live view: driven by a fake clock into a fake terminal, on its own and inside whole runs.

No assertion is about real time: the whole runs use a clock that moves only while their model computes, so which
frames are drawn, and when on that clock, is exact.
"""
from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

from timebudget.clock import BudgetClock
from timebudget.config import Config
from timebudget.progress import Progress, Status
from timebudget.trainer import train

from conftest import FakeClock
from test_trainer import TIMED_MODEL


class Terminal(io.StringIO):
    """A stream that says it is a terminal; the frames tqdm draws are separated by carriage returns."""

    def isatty(self) -> bool:
        return True

    def frames(self) -> list[str]:
        return [f.strip() for f in re.split(r"[\r\n]", self.getvalue()) if f.strip()]


@dataclass
class Frame:
    phase: str
    elapsed: float
    text: str

    @classmethod
    def parse(cls, line: str) -> Frame:
        phase, _, rest = line.partition("|")
        elapsed = re.search(r"\| ([\d.]+)/[\d.]+s", line)
        assert elapsed, line
        return cls(phase.strip(), float(elapsed.group(1)), line)

    def field(self, pattern: str) -> str | None:
        found = re.search(pattern, self.text)
        return found.group(1) if found else None


def test_silent_when_quiet_or_not_a_terminal(fake_clock: FakeClock) -> None:
    clock = BudgetClock(10.0, now=fake_clock)
    for view, stream in [(Progress(clock, quiet=True, stream=(t := Terminal())), t),
                         (Progress(clock, stream=(s := io.StringIO())), s)]:
        with view:
            view.phase("training", lambda: Status(lr=0.1, samples=64, epoch=0, kept_fraction=1.0))
            for _ in range(3):
                fake_clock.advance(1.0)
                view.tick(torch.ones(4))
        assert stream.getvalue() == ""


def test_refreshes_on_time_not_per_step_and_shows_the_run(fake_clock: FakeClock) -> None:
    """Ticks within the interval draw nothing and read nothing; once the interval has passed one tick draws a frame
    with the phase, elapsed and budget, time left, lr, samples/s, epoch and kept share; the loss handed to a refresh
    is shown from the next one on (it travels to the host in between)."""
    clock = BudgetClock(20.0, now=fake_clock)
    term = Terminal()
    reads = []
    samples = [0]

    def status() -> Status:
        reads.append(fake_clock())
        return Status(lr=0.05, samples=samples[0], epoch=3, kept_fraction=0.25)

    with Progress(clock, stream=term, interval=0.5, background=False) as view:
        assert Frame.parse(term.frames()[-1]).phase == "start-up"
        fake_clock.advance(2.0)
        view.phase("calibration")
        fake_clock.advance(1.0)
        view.phase("training", status)
        drawn = len(term.frames())
        for _ in range(6):  # steps of 1/16 s: 0.375 s in all, within the interval
            fake_clock.advance(0.0625)
            samples[0] += 128
            view.tick(torch.full((128,), 2.0))
        assert len(term.frames()) == drawn and len(reads) == 2  # the phase change's frame only (samples, draw)
        fake_clock.advance(0.125)
        samples[0] += 128
        view.tick(torch.full((128,), 2.0))
        first = Frame.parse(term.frames()[-1])
        assert len(term.frames()) == drawn + 1 and len(reads) == 4
        assert (first.phase, first.elapsed) == ("training", 3.5)
        assert first.field(r"left ([\d.]+)s") == "16.5" and first.field(r"lr ([\d.]+)") == "0.05"
        assert first.field(r"([\d,]+) samples/s") == "1,792"  # 896 samples in 0.5 s
        assert (first.field(r"epoch (\d+)"), first.field(r"kept (\d+)%")) == ("3", "25")
        assert first.field(r"loss ([\d.]+)") is None  # the copy started at this refresh is read at the next
        fake_clock.advance(0.6)
        view.tick(torch.full((128,), 7.0))
        assert Frame.parse(term.frames()[-1]).field(r"loss ([\d.]+)") == "2"
        fake_clock.advance(0.6)
        view.tick(None)
        assert Frame.parse(term.frames()[-1]).field(r"loss ([\d.]+)") == "7"
        view.phase("tail")
    assert Frame.parse(term.frames()[-1]).phase == "tail"
    assert term.getvalue().endswith("\n")  # a finished run leaves its last frame on screen


def test_a_background_thread_redraws_where_no_step_ticks(fake_clock: FakeClock) -> None:
    """Start-up, calibration, an evaluation or the tail: nothing ticks, yet the line moves once a refresh is due."""
    term = Terminal()
    with Progress(BudgetClock(30.0, now=fake_clock), stream=term, interval=0.05) as view:
        fake_clock.advance(3.0)
        view.phase("calibration")
        fake_clock.advance(1.5)  # a long calibration: no call into the view
        deadline = time.monotonic() + 10.0  # polls for the thread's frame; only a hung thread takes this long
        while "4.5/30s" not in term.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Frame.parse(term.frames()[-1]).elapsed == 4.5


def test_an_error_clears_the_bar(fake_clock: FakeClock) -> None:
    term = Terminal()
    with pytest.raises(RuntimeError), Progress(BudgetClock(5.0, now=fake_clock), stream=term):
        raise RuntimeError("calibration failed")
    assert not term.getvalue().endswith("\n") and term.getvalue().endswith("\r")


# --- inside whole runs ------------------------------------------------------------------------------------------------
@pytest.fixture
def timed_run(user_module: Callable[[str, str], ModuleType], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[Frame]]:
    """Train with a clock that moves only while the model computes (``factor`` times 3e-4 s per training sample),
    printing into a fake terminal; return the frames drawn."""
    module = user_module("timed_model", TIMED_MODEL)

    def run(factor: float, **fields: object) -> list[Frame]:
        module.clock.factor, module.clock.slow_from = factor, 0.0
        term = Terminal()
        monkeypatch.setattr(sys, "stdout", term)
        train(Config(seconds=8.0, data="synthetic", model="timed_model:make", batch_size=64, out=str(tmp_path / "r"),
                     **fields), now=module.clock)
        monkeypatch.undo()
        return [Frame.parse(f) for f in term.frames()]

    return run


def _training(frames: list[Frame]) -> list[Frame]:
    training = [f for f in frames if f.phase == "training"]
    gaps = [b.elapsed - a.elapsed for a, b in zip(training, training[1:])]
    assert gaps and max(gaps) <= 0.5 + 0.1 + 0.1  # the interval, one step (0.1 s at most here), the rounding
    return training


def test_updates_within_an_epoch_longer_than_log_every_steps(timed_run: Callable[..., list[Frame]]) -> None:
    """Epochs of 32 steps taking 3 s each, a step record every 10 steps: the view moves every half second within
    an epoch, with the loss, samples/s and lr falling as the budget runs out."""
    training = _training(timed_run(factor=5.0, log_every=10, warmup=0.0))  # no warm-up: the lr only falls
    first_epoch = [f for f in training if f.field(r"epoch (\d+)") == "0"]
    assert len({f.elapsed for f in first_epoch}) >= 5
    assert any(f.field(r"loss ([\d.e+-]+)") for f in first_epoch)
    lrs = [float(f.field(r"lr ([\d.e+-]+)") or "nan") for f in training]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
    assert all(f.field(r"([\d,]+) samples/s") for f in training[1:])


def test_updates_across_epochs_shorter_than_log_every_steps(timed_run: Callable[..., list[Frame]]) -> None:
    """A tenth of the data per epoch (0.06 s) and a step record every 1000 steps, far more than an epoch has: the
    view still moves every half second, through the epochs, showing the loss and the kept share."""
    training = _training(timed_run(factor=1.0, log_every=1000, strategy="random", keep_fraction=0.1))
    epochs = [int(f.field(r"epoch (\d+)") or -1) for f in training]
    assert epochs == sorted(epochs) and len(set(epochs)) >= 8
    later = [f for f in training if f.elapsed >= training[0].elapsed + 1.5]  # a loss has arrived by then
    assert len(later) >= 5 and all(f.field(r"loss ([\d.e+-]+)") for f in later)
    assert all(5 <= int(f.field(r"kept (\d+)%") or 0) <= 15 for f in later)  # a tenth, in whole batches

