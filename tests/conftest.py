"""Shared fixtures and checks: a fake clock for the controller, user modules for ``module:function`` specs, the CLI
in this process and as a subprocess, and the checks every finished run folder must pass.

Nothing here sleeps: the controller is driven by :class:`FakeClock`, so its decisions are checked exactly and no test
depends on how busy the machine is. Only the few end-to-end runs use real time, with loose bounds.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# The suite is the CPU's (the README's test command). On a machine with a GPU, "auto" would pick it, and a CUDA
# context's start-up is no part of what the few-second budgets of the end-to-end runs test. So the GPU is hidden, from
# this process and the CLI's subprocesses, before torch can look for it; TIMEBUDGET_TEST_CUDA=1 shows it, for the CUDA
# tests (tests/test_accel.py, run so by benchmarks/gpu_check.sh).
if os.environ.get("TIMEBUDGET_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

# The first torch.optim optimizer of a process imports torch._dynamo (README, Start-up): 1-2 s here, 4.3 s on the CPU
# of session 14's GPU machine, where it alone outlasted a 4 s test budget. The in-process runs' budgets test the
# trainer, not torch's import floor, so the floor is paid here, once, before any of them starts.
import torch._dynamo  # noqa: E402,F401

from timebudget import cli  # noqa: E402

SLACK_S = 0.5  # loose: the benchmark measures how close runs end to the deadline; tests only catch gross overshoot
SUMMARY_KEYS = {"budget_s", "elapsed_s", "test_metrics", "samples_trained", "steps", "epochs", "train_s",
                "samples_per_s", "strategy", "device"}


class FakeClock:
    """A monotonic clock that moves only when a test says so; pass it as ``now=``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], ModuleType]:
    """Write ``<name>.py`` into a fresh current directory, where ``module:function`` specs look first, and import it.

    The module and the ``sys.path`` entries the import adds are removed afterwards, so tests cannot see each other's.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))

    def write(name: str, source: str) -> ModuleType:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.invalidate_caches()
        sys.path.insert(0, str(tmp_path))
        return importlib.import_module(name)

    return write


@dataclass
class CliResult:
    """What a ``timebudget`` call left behind: its exit code and its stderr, line by line."""

    code: int
    lines: list[str]

    @classmethod
    def of(cls, proc: subprocess.CompletedProcess[str]) -> CliResult:
        return cls(proc.returncode, proc.stderr.splitlines())

    def one_line_error(self, *needles: str) -> None:
        """A bad input must end in one line on stderr naming the problem, never a traceback."""
        assert self.code != 0
        assert len(self.lines) == 1, self.lines
        line = self.lines[0]
        assert re.match(r"timebudget( train)?: error: ", line), line
        for needle in needles:
            assert needle in line, f"{needle!r} not in {line!r}"


@pytest.fixture
def cli_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``timebudget`` in this process and collect its exit code and stderr.

    The budget counts from the call, as it would from a fresh process's start (pytest's own start is long past), so
    an input wrongly accepted trains for the budget given and then fails its test instead of hanging the suite.
    """

    def run(*argv: str) -> CliResult:
        monkeypatch.setattr(cli, "_PROCESS_START", time.monotonic())
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse's own errors
            code = int(exc.code or 0)
        return CliResult(code, capsys.readouterr().err.splitlines())

    return run


def run_timebudget(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m timebudget ...`` as a user runs it: a fresh interpreter, so start-up counts against the budget.

    One OpenMP thread: on a machine shared with other processes two threads can stall each other for a third of a
    second per step of these tiny models, which would leave a short run with hardly any steps.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "timebudget", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# --- checks of a finished run folder ---------------------------------------------------------------------------------
def check_summary(run_dir: Path, budget: float) -> dict[str, Any]:
    """summary.json holds every promised field, consistently, and shows that the run ended by the deadline without
    giving up half of it; returns the summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert (summary["budget_s"], summary["strategy"]) == (budget, "infobatch")
    assert summary["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert summary["samples_per_s"] == pytest.approx(summary["samples_trained"] / summary["train_s"])
    assert summary["steps"] >= summary["epochs"] >= 1
    assert 0.5 * budget <= summary["elapsed_s"] <= budget + SLACK_S
    assert 0 < summary["train_s"] < summary["elapsed_s"]
    return summary


def step_records(run_dir: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every line of metrics.jsonl is a JSON record; step records carry time, lr, loss and samples seen, move
    forward, and end at the samples the summary counts. Returns the step records."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    assert steps and all({"time", "lr", "loss", "samples"} <= r.keys() for r in steps)
    assert all(b["time"] >= a["time"] and b["samples"] > a["samples"] for a, b in zip(steps, steps[1:]))
    assert steps[-1]["samples"] == summary["samples_trained"]
    return steps


def load_checkpoint(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """checkpoint.pt loads without unpickling code and holds what a resume needs, at the run's last step."""
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "steps", "rng"} <= checkpoint.keys()
    assert checkpoint["steps"] == summary["steps"]
    return checkpoint


@pytest.fixture(scope="module")
def warm_one_thread() -> Iterator[None]:
    """One thread for a module's in-process runs, and torch's optimizer machinery imported before their budgets start
    (the first optimizer imports torch._dynamo: seconds on a busy machine, which such tests are not about)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    yield
    torch.set_num_threads(threads)
