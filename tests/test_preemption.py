"""Signals delivered to a real ``python -m timebudget train`` process, as a scheduler or a user sends them: the files
it leaves and the status it reports (never how long it took: the machine may be busy)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from timebudget import checkpoint, cli
from timebudget.preemption import EXIT_SECOND_SIGINT

from conftest import run_timebudget

SLOW_MODEL = """
import os
from torch import nn


class Slow(nn.Module):
    '''Digits' CNN-sized MLP whose training step stalls for a minute once the file ``stall`` exists.'''

    def __init__(self, features, num_outputs):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, num_outputs))

    def forward(self, x):
        if self.training and os.path.exists("stall"):
            import time
            time.sleep(60)
        return self.body(x)


def build(input_shape, num_outputs):
    features = 1
    for size in input_shape:
        features *= size
    return Slow(features, num_outputs)
"""


def start(*argv: str, cwd: Path) -> subprocess.Popen[str]:
    """``python -m timebudget train ...`` in the background, as :func:`conftest.run_timebudget` runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "timebudget", "train", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 90.0) -> None:
    """Until ``path`` exists (the run got that far), failing if the process ends first."""
    limit = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < limit, f"{path} did not appear"
        time.sleep(0.05)


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, list[str]]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.splitlines()


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_stop_signal_saves_the_run_as_interrupted(tmp_path: Path, signame: str) -> None:
    out = tmp_path / "run"
    proc = start("--seconds", "90", "--out", str(out), "--quiet", cwd=tmp_path)
    wait_for(out / "metrics.jsonl", proc)  # the folder is open: training is starting
    time.sleep(0.5)
    proc.send_signal(getattr(signal, signame))
    code, lines = finish(proc)
    assert code == cli.EXIT_INTERRUPTED, lines
    assert lines == [f"timebudget: interrupted by {signame} at step {summary_of(out)['steps']}; saved in {out}; "
                     f"continue with: timebudget train --resume {out}"]
    summary = summary_of(out)
    assert (summary["status"], summary["signal"]) == ("interrupted", signame)
    assert summary["parts"] == [{**summary["parts"][0], "status": "interrupted", "signal": signame}]
    assert summary["test_metrics"]["accuracy"] > 0.1  # the final evaluation fitted in the default grace
    state = torch.load(out / checkpoint.NAME, weights_only=True)
    assert state["format"] == checkpoint.FORMAT and state["steps"] == summary["steps"]
    assert state["parts"][-1]["status"] == "interrupted"
    assert torch.load(out / "scores.pt", weights_only=True)["count"].sum() > 0
    assert not list(out.glob(".*.tmp"))


def test_a_signal_before_training_ends_the_process_at_once_with_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start("--seconds", "90", "--out", str(out), "--quiet", cwd=tmp_path)
    status = Path(f"/proc/{proc.pid}/status")
    if not status.exists():
        proc.kill()
        pytest.skip("needs /proc to see when the handler is installed")
    while not int(next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:")).split()[1],
                  16) & (1 << (signal.SIGTERM - 1)):  # until the command line catches SIGTERM, before torch loads
        assert proc.poll() is None
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    code, lines = finish(proc)
    assert code == cli.EXIT_INTERRUPTED
    assert lines == ["timebudget: interrupted by SIGTERM before training started; nothing was written"]
    assert not out.exists()


def test_a_second_sigint_exits_at_once_and_leaves_the_last_complete_files(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW_MODEL))
    out = tmp_path / "run"
    proc = start("--seconds", "90", "--model", "slow:build", "--out", str(out), "--quiet", "--checkpoint-every",
                 "0.2", cwd=tmp_path)
    wait_for(out / checkpoint.NAME, proc)
    (tmp_path / "stall").write_text("")  # the next training step hangs: only an immediate exit ends the process
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, lines = finish(proc, timeout=30)  # well before the stalled step would end
    assert code == EXIT_SECOND_SIGINT and "second SIGINT" in lines[-1]
    assert not (out / "summary.json").exists()
    state = torch.load(out / checkpoint.NAME, weights_only=True)
    assert state["parts"][-1]["status"] == "running" and state["steps"] >= 1


def test_kill_9_leaves_a_checkpoint_that_loads_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start("--seconds", "90", "--out", str(out), "--quiet", "--checkpoint-every", "0.2", cwd=tmp_path)
    wait_for(out / checkpoint.NAME, proc)
    time.sleep(random.uniform(0.2, 1.5))
    proc.kill()
    finish(proc)
    state = torch.load(out / checkpoint.NAME, weights_only=True)
    assert state["format"] == checkpoint.FORMAT and not (out / "summary.json").exists()
    resumed = run_timebudget("train", "--resume", str(out), "--seconds", "30", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = summary_of(out)
    assert summary["status"] == "completed" and summary["steps"] > state["steps"]
    assert summary["checkpoint_s"] > 0  # the resumed part checkpoints too (the run's own --checkpoint-every)
    assert [p["status"] for p in summary["parts"]] == ["crashed", "completed"]
    assert summary["parts"][1]["steps"] == summary["steps"] - state["steps"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "resume"] == [state["steps"]]
