"""Faults a budgeted run meets, each as a real ``python -m timebudget train`` process on the CPU, and what it leaves.

1. **SIGTERM at 40% of the budget** (or, on a machine so loaded that start-up takes longer, 0.2 s after training
   started, so that there is a run to save): seconds from the signal to the exit against the tail reserve + 1 s, the
   files written and the status; then ``--resume`` with what is left of the budget, its accuracy against an
   uninterrupted run with the same seed and budget, and the wall time of both parts against the budget (several seeds).
2. **kill -9 at random moments** of a run with checkpoints (``--checkpoint-every 0.25``), a chain: after each kill
   the last checkpoint must load with ``torch.load(weights_only=True)`` and the next process resumes from it, and is
   killed in turn; the last one runs to the end. Each kill comes at a random moment (uniform, 0 to 1.5 s) after the
   process has started training (its first checkpoint written), so that kills land among steps and checkpoint writes
   rather than in the start-up, where there is nothing to lose.
3. **NaN and explosion injected** by a user model (``module:function``) at a chosen training step: once (a rollback,
   then the run goes on), for good (diverged: exit 5 with the last good state saved), and outputs x1e30 for good.
4. **Every bad input** of issue 13: one line and a non-zero exit each, and nothing written; and what training can
   honestly go on with (a batch larger than the training set): a warning line, a note in the summary, exit 0.

Goals (issue 13): signal to exit within the tail reserve + 1 s; resumed accuracy within noise of uninterrupted; every
kill survived; no run that exits 0 with a non-finite loss or a meaningless metric. Exit status 1 when one is missed.

Smoke run: ``python benchmarks/faults.py --quick`` (a few minutes on a 2-core CPU); full:
``python benchmarks/faults.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "scores.pt", "summary.json")

FAULTY_MODEL = """
import torch
from torch import nn


class Faulty(nn.Module):
    '''A small CNN whose training forward goes wrong from its AT-th call (calibration's two steps are calls 1 and 2).'''

    def __init__(self, channels, num_outputs, mode, at):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                  nn.Flatten(), nn.Linear(256, num_outputs))
        self.mode, self.at, self.calls = mode, at, 0

    def forward(self, x):
        out = self.body(x)
        if self.training:
            self.calls += 1
            if (self.mode == "nan_once" and self.calls == self.at) or (self.mode == "nan" and self.calls >= self.at):
                out = out * float("nan")
            elif self.mode == "explode" and self.calls >= self.at:
                out = out * 1e30
        return out


def build(mode, at):
    return lambda input_shape, num_outputs: Faulty(input_shape[0], num_outputs, mode, at)


nan_once = build("nan_once", {at})
nan_forever = build("nan", {at})
explode = build("explode", {at})
nan_always = build("nan", 1)
"""

NAN_DATA = """
import torch
from torch.utils.data import TensorDataset


def make():
    x = torch.randn(400, 12)
    x[::7, 3] = float("nan")
    y = torch.arange(400) % 4
    return TensorDataset(x, y), TensorDataset(x[:100], y[:100])
"""


def timebudget(*argv: str) -> list[str]:
    return [sys.executable, "-m", "timebudget", "train", *argv]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*argv: str, cwd: Path) -> tuple[int, float, list[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(timebudget(*argv), cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=900)
    return proc.returncode, time.perf_counter() - t0, proc.stderr.splitlines()


def summary(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def accuracy(s: dict[str, Any] | None) -> float | None:
    return (s.get("test_metrics") or {}).get("accuracy") if s else None


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


# --- 1. SIGTERM at 40%, then --resume, against an uninterrupted run -------------------------------------------------
def sigterm_and_resume(work: Path, budget: float, seeds: list[int]) -> bool:
    print(f"\n## 1. SIGTERM at 40% of a {budget:g} s budget, then --resume with what is left (digits, cnn)\n")
    print("| seed | signal at s | signal to exit s | tail reserve s | within reserve + 1 s | status, signal | files | "
          "exit | "
          "resume exit | both parts' wall s | resumed acc | uninterrupted acc | uninterrupted exit, wall s |")
    print("|---:|---:|---:|---:|:---:|---|---|---:|---:|---:|---:|---:|---|")
    ok = True
    differences = []
    for seed in seeds:
        out = work / f"sigterm-{seed}"
        t0 = time.perf_counter()
        proc = subprocess.Popen(timebudget("--seconds", f"{budget:g}", "--seed", str(seed), "--out", str(out),
                                           "--quiet"), cwd=work, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        while not (out / "metrics.jsonl").exists() and proc.poll() is None:  # the run folder: training starts
            time.sleep(0.02)
        time.sleep(max(0.2, 0.4 * budget - (time.perf_counter() - t0)))
        proc.send_signal(signal.SIGTERM)
        t_signal = time.perf_counter()
        proc.communicate(timeout=120)
        to_exit = time.perf_counter() - t_signal
        first_wall = time.perf_counter() - t0
        s = summary(out)
        reserve = s["tail_reserved_s"] if s else math.nan
        files = [f for f in FILES if (out / f).exists()]
        code_r, wall_r, _ = run("--resume", str(out), "--quiet", cwd=work)
        resumed = summary(out) if code_r == 0 else None
        code_u, wall_u, _ = run("--seconds", f"{budget:g}", "--seed", str(seed), "--out", str(work / f"whole-{seed}"),
                                "--quiet", cwd=work)
        whole = summary(work / f"whole-{seed}")
        fast = to_exit <= reserve + 1.0
        ok &= fast and proc.returncode == 4 and code_r == 0 and code_u == 0 and len(files) == len(FILES)
        ok &= bool(resumed and resumed["status"] == "completed")
        if accuracy(resumed) is not None and accuracy(whole) is not None:
            differences.append(accuracy(resumed) - accuracy(whole))
        status = f"{s['status']}, {s.get('signal')}" if s else "none"
        print(f"| {seed} | {t_signal - t0:.2f} | {to_exit:.2f} | {reserve:.2f} | {'yes' if fast else 'NO'} | "
              f"{status} | "
              f"{len(files)}/{len(FILES)} | {proc.returncode} | {code_r} | {first_wall + wall_r:.2f} | "
              f"{_fmt(accuracy(resumed))} | {_fmt(accuracy(whole))} | {code_u}, {wall_u:.2f} |")
    if differences:
        print(f"\nresumed minus uninterrupted accuracy: median {statistics.median(differences):+.4f}, range "
              f"[{min(differences):+.4f}, {max(differences):+.4f}] over {len(differences)} seeds (a digits test set "
              "of 360: one sample is 0.0028)")
    return ok


# --- 2. kill -9 at random moments -----------------------------------------------------------------------------------
def kills(work: Path, count: int, rng: random.Random) -> bool:
    print(f"\n## 2. kill -9 at {count} random moments of a run with --checkpoint-every 0.25 (a chain of resumes)\n")
    print("| kill | process | killed s after training started | checkpoint loads (weights_only) | its steps | "
          "parts so far |")
    print("|---:|---|---:|:---:|---:|---:|")
    out = work / "kills"
    survived = 0
    last_steps = -1
    for i in range(count):
        first = i == 0
        argv = (["--seconds", "600", "--out", str(out), "--checkpoint-every", "0.25", "--quiet"] if first else
                ["--resume", str(out), "--seconds", "600", "--quiet"])
        before = _mtime(out / "checkpoint.pt")
        proc = subprocess.Popen(timebudget(*argv), cwd=work, env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while _mtime(out / "checkpoint.pt") == before and proc.poll() is None:  # until its first checkpoint
            time.sleep(0.02)
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        try:
            state = torch.load(out / "checkpoint.pt", weights_only=True)
            loads = state["format"] == 1 and state["steps"] >= last_steps
            last_steps, parts = state["steps"], len(state["parts"])
        except Exception as exc:  # a failure is a row of the table, not the end of the benchmark
            loads, parts = False, f"{type(exc).__name__}"
        survived += loads
        print(f"| {i + 1} | {'first' if first else 'resumed'} | {delay:.2f} | {'yes' if loads else 'NO'} | "
              f"{last_steps} | {parts} |")
    code, wall, lines = run("--resume", str(out), "--seconds", "60", "--quiet", cwd=work)
    s = summary(out)
    done = code == 0 and s is not None and s["status"] == "completed" and s["steps"] > last_steps
    print(f"\nsurvived: {survived} of {count} kills; the last resume: exit {code}, status "
          f"{s['status'] if s else None}, steps {last_steps} -> {s['steps'] if s else None}, accuracy "
          f"{_fmt(accuracy(s))}, parts {len(s['parts']) if s else None} ({wall:.1f} s){'' if code == 0 else lines}")
    return survived == count and done


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


# --- 3. NaN and explosion at a chosen step --------------------------------------------------------------------------
def injected(work: Path, budget: float, at: int) -> bool:
    print(f"\n## 3. NaN or x1e30 outputs from training step {at - 2} (digits, a small CNN, {budget:g} s)\n")
    (work / "faulty.py").write_text(textwrap.dedent(FAULTY_MODEL).replace("{at}", str(at)))
    print("| fault | exit | status | rollbacks | final accuracy | steps | stderr |")
    print("|---|---:|---|---:|---:|---:|---|")
    ok = True
    for name, expected in (("nan_once", 0), ("nan_forever", 5), ("explode", 5)):
        out = work / f"inject-{name}"
        code, _, lines = run("--seconds", f"{budget:g}", "--model", f"faulty:{name}", "--out", str(out), "--quiet",
                             cwd=work)
        s = summary(out)
        acc = accuracy(s)
        ok &= code == expected and acc is not None and math.isfinite(acc)
        print(f"| {name} | {code} | {s['status'] if s else '-'} | {len(s['rollbacks']) if s else '-'} | {_fmt(acc)} | "
              f"{s['steps'] if s else '-'} | {' / '.join(lines)[:90]} |")
    return ok


# --- 4. bad input ---------------------------------------------------------------------------------------------------
def bad_inputs(work: Path) -> bool:
    print("\n## 4. Bad input: one line, a non-zero exit, nothing written (or, where training can go on, a warning)\n")
    g = np.random.default_rng(0)

    def npz(name: str, **change: np.ndarray) -> str:
        y = np.arange(600) % 3
        arrays = {"x_train": (g.normal(size=(600, 10)) + y[:, None]).astype(np.float32), "y_train": y,
                  "x_test": g.normal(size=(150, 10)).astype(np.float32), "y_test": np.arange(150) % 3}
        arrays.update(change)
        np.savez(work / name, **arrays)
        return str(work / name)

    x_nan = g.normal(size=(600, 10)).astype(np.float32)
    x_nan[123, 4] = np.nan
    (work / "nandata.py").write_text(textwrap.dedent(NAN_DATA))
    (work / "blocker").write_text("")
    cases = [
        ("x_train with one NaN (.npz)", ["--data", npz("nan.npz", x_train=x_nan)]),
        ("test labels 5..7, train 0..2", ["--data", npz("labels.npz", y_test=np.arange(150) % 3 + 5)]),
        ("a single training class", ["--data", npz("single.npz", y_train=np.zeros(600, dtype=np.int64))]),
        ("model whose forward returns NaN", ["--model", "faulty:nan_always"]),
        ("user dataset with NaN inputs", ["--data", "nandata:make"]),
        ("--out under a file", ["--out", str(work / "blocker" / "run")]),
    ]
    print("| input | exit | one line | nothing written | the line |")
    print("|---|---:|:---:|:---:|---|")
    ok = True
    for i, (name, argv) in enumerate(cases):
        out = work / f"bad-{i}"
        argv = argv if "--out" in argv else [*argv, "--out", str(out)]
        code, _, lines = run("--seconds", "60", "--quiet", *argv, cwd=work)
        nothing = not out.exists() and not (work / "blocker" / "run").exists()
        one = len(lines) == 1 and lines[0].startswith("timebudget: error: ")
        ok &= code == 2 and one and nothing
        print(f"| {name} | {code} | {'yes' if one else 'NO'} | {'yes' if nothing else 'NO'} | "
              f"{lines[0][:150] if lines else ''} |")
    out = work / "warned"
    code, _, lines = run("--seconds", "60", "--quiet", "--data", npz("small.npz"), "--batch-size", "1000", "--out",
                         str(out), cwd=work)
    s = summary(out)
    warnings = [line.removeprefix("timebudget: warning: ") for line in lines]
    noted = code == 0 and s is not None and s["warnings"] == warnings
    ok &= noted
    print(f"\nbatch larger than the training set: exit {code}, warning in summary.json: {'yes' if noted else 'NO'}: "
          f"{lines[0] if lines else ''}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 5 kills, shorter budgets")
    parser.add_argument("--budget", type=float, help="budget of the SIGTERM and injection runs (default 45, quick 30)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the SIGTERM runs (default 0 1 2, quick 0)")
    parser.add_argument("--kills", type=int, help="kill -9 moments (default 20, quick 5)")
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3, 4], help="which parts to run")
    args = parser.parse_args()
    budget = args.budget or (30.0 if args.quick else 45.0)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    count = args.kills or (5 if args.quick else 20)
    print(f"# faults: {shlex.join([sys.executable, *sys.argv])}")
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, Python {platform.python_version()}, OMP_NUM_THREADS=1")
    with tempfile.TemporaryDirectory(prefix="timebudget-faults-") as tmp:
        work = Path(tmp)
        parts = {
            1: ("signal and resume", lambda: sigterm_and_resume(work, budget, seeds)),
            2: ("kill -9", lambda: kills(work, count, random.Random(0))),
            3: ("injected NaN", lambda: injected(work, budget, at=102 if args.quick else 202)),
            4: ("bad input", lambda: bad_inputs(work)),  # after 3, whose model it uses
        }
        if 4 in args.sections and 3 not in args.sections:
            (work / "faulty.py").write_text(textwrap.dedent(FAULTY_MODEL).replace("{at}", "202"))
        results = {parts[i][0]: parts[i][1]() for i in sorted(args.sections)}
    print("\n" + ", ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
