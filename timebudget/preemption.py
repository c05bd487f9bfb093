"""Pre-emption: SIGTERM, SIGINT and SIGUSR1 ask the run to stop at the next step boundary and write its tail.

A scheduler's signal (SLURM sends SIGTERM at the time limit, or SIGUSR1 early with ``--signal=USR1@90``; a spot
instance or ``kill`` sends SIGTERM; Ctrl-C is SIGINT) must not lose the run: the loop reads :attr:`Preemption.signal`
at each step boundary and runs its tail at once (the final evaluation if it fits in the grace period, then checkpoint,
scores and ``summary.json`` with ``"status": "interrupted"``). Once training has begun the handler only records which
signal came: no work happens inside it, so it cannot interrupt a write half-way. Before that (start-up, set-up,
calibration) nothing has been written and there is nothing to save, so the handler raises :class:`Interrupted` and the
run ends at once with exit status 4. A second SIGINT (an impatient user) exits at once with
status 130 (128 + SIGINT, the shell's convention); every artifact is written atomically, so what is on disk then is
the last complete version of each file.

Handlers are installed only in the main thread (Python allows no other) and the previous ones are restored when the
run ends, so a library caller's own handlers survive a ``train()`` call. The command line installs them at its very
start (:func:`watch_early`), before torch is imported, so a signal during its start-up ends it the same way.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))
EXIT_SECOND_SIGINT = 128 + signal.SIGINT


class Interrupted(BaseException):
    """A stop signal came before training started: there is nothing to save. A ``BaseException``, as
    ``KeyboardInterrupt`` is, so that no ``except Exception`` in library code on the way swallows it."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name} before training started; nothing was written")
        self.signal = signal_name


class Preemption:
    """A context manager that turns the stop signals into a flag for the loop: ``signal`` is the name of the first
    one received (``"SIGTERM"``), ``None`` until then."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.training = False  # before: raise Interrupted at once; after: only set the flag
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def begin_training(self) -> None:
        """From now on the run has something to save: a signal only sets the flag. Raises :class:`Interrupted` if
        one has come already."""
        if self.signal is not None:
            raise Interrupted(self.signal)
        self.training = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signal == "SIGINT":
            sys.stderr.write("timebudget: second SIGINT: exiting now; the files on disk are the last complete ones\n")
            os._exit(EXIT_SECOND_SIGINT)
        if self.signal is None:
            self.signal = signal.Signals(signum).name
        if not self.training:
            raise Interrupted(self.signal)

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self.signal = self.signal or _EARLY.signal  # one that came in the command line's start-up, if swallowed
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


_EARLY = Preemption()


def watch_early() -> None:
    """Catch stop signals from now on (the command line's start, before the heavy imports) until a run takes over."""
    _EARLY.__enter__()


def stop_watching() -> None:
    """The signals' previous handlers again (after the run: a signal stops ``--explain`` as it would any program)."""
    _EARLY.__exit__(None, None, None)
