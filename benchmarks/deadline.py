"""Does ``timebudget train --seconds B`` end at B? Measured from outside, with and without a competing CPU load.

Each run is timed with ``time.perf_counter`` around ``subprocess.run``, from just before the spawn to the exit, since
the promise is about the whole process: interpreter start, imports, training, final evaluation, checkpoint, exit.
``summary.json``'s own ``elapsed_s`` is read too, so a gap between the process's view and the outside view shows.
One budget is repeated with busy loops on every core started at a fraction of the budget (machines are shared; the
controller must notice steps slowing down and still land on time). The peer is PyTorch Lightning's
``Trainer(max_time=B)`` on the same model and data (``benchmarks/lightning_peer.py``), measured the same way.
Goal (issue 2): every run within max(0.3 s, 0.5% of B) of B. The exit status is 1 when a timebudget row misses it.

Smoke run: ``python benchmarks/deadline.py --quick``; full run: ``python benchmarks/deadline.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PEER_SCRIPT = Path(__file__).with_name("lightning_peer.py")
BUSY_LOOP = "while True: pass"


@dataclass
class Run:
    """One finished process: outside wall time, and what its summary.json says (None when it wrote none)."""

    wall_s: float
    returncode: int
    elapsed_s: float | None
    accuracy: float | None
    stderr_tail: str


@dataclass
class Row:
    """All runs of one tool, device, budget and load setting: one line of the table."""

    tool: str
    device: str
    load: bool
    budget: float
    runs: list[Run]


def tolerance(budget: float) -> float:
    return max(0.3, 0.005 * budget)


def timebudget_command() -> list[str]:
    """The installed console script, as a user runs it; ``python -m timebudget`` when it is not on PATH."""
    exe = shutil.which("timebudget")
    return [exe] if exe else [sys.executable, "-m", "timebudget"]


def command(tool: str, budget: float, device: str, out: Path) -> list[str]:
    if tool == "timebudget":
        return [*timebudget_command(), "train", "--seconds", f"{budget:g}", "--data", "digits", "--model", "cnn",
                "--device", device, "--quiet", "--out", str(out)]
    return [sys.executable, str(PEER_SCRIPT), "--seconds", f"{budget:g}", "--device", device, "--out", str(out)]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _start_load(hogs: list[subprocess.Popen]) -> None:
    hogs.extend(subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(usable_cores()))


def run_once(cmd: list[str], out: Path, load_at: float | None) -> Run:
    """Run ``cmd`` and time it from outside; with ``load_at``, busy loops on every core start that many seconds in."""
    hogs: list[subprocess.Popen] = []
    timer = threading.Timer(load_at, _start_load, args=(hogs,)) if load_at is not None else None
    try:
        t0 = time.perf_counter()
        if timer is not None:
            timer.start()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:  # never leave busy loops behind, not even on Ctrl-C
        if timer is not None:
            timer.cancel()
            timer.join()
        for hog in hogs:
            hog.kill()
            hog.wait()
    elapsed = accuracy = None
    summary_path = out / "summary.json"
    if proc.returncode == 0 and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        elapsed = summary.get("elapsed_s")
        accuracy = summary.get("test_metrics", {}).get("accuracy")
    return Run(wall, proc.returncode, elapsed, accuracy, proc.stderr.strip()[-400:])


def measure(tool: str, device: str, budget: float, runs: int, load_at_fraction: float | None) -> Row:
    row = Row(tool, device, load_at_fraction is not None, budget, [])
    load_at = budget * load_at_fraction if load_at_fraction is not None else None
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="tb-deadline-") as tmp:
            out = Path(tmp) / "run"
            run = run_once(command(tool, budget, device, out), out, load_at)
        row.runs.append(run)
        status = f"error {run.wall_s - budget:+.3f} s" if run.returncode == 0 else f"FAILED rc={run.returncode}"
        print(f"  {tool} {device} B={budget:g}{' +load' if row.load else ''} run {i + 1}/{runs}: "
              f"wall {run.wall_s:.3f} s, {status}", flush=True)
        if run.returncode != 0 or run.elapsed_s is None:
            print(f"    stderr: {run.stderr_tail or '(empty)'}", flush=True)
    return row


def lightning_version() -> str | None:
    """Lightning's version, or None when ``import lightning`` fails (the peer is an optional dependency)."""
    try:
        import lightning
    except Exception as exc:  # any failure to import means no peer; say why
        print(f"Lightning peer: skipped (import lightning failed: {type(exc).__name__}: {exc})")
        return None
    return lightning.__version__


def machine_info(devices: list[str], lightning: str | None) -> list[str]:
    lines = [
        f"machine: {platform.platform()}, {os.cpu_count()} cores ({usable_cores()} usable), load average "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        + (f"lightning {lightning}" if lightning else "no Lightning peer"),
        f"devices: {', '.join(devices)}",
    ]
    if "cuda" in devices:
        lines.append(f"cuda: {torch.cuda.get_device_name(0)}")
    return lines


def verdict(row: Row) -> str:
    """pass only when every run finished and each landed within the tolerance of its budget."""
    failed = sum(r.returncode != 0 or r.elapsed_s is None for r in row.runs)
    if failed:
        return f"ERROR ({failed} of {len(row.runs)} failed)"
    worst = max(abs(r.wall_s - row.budget) for r in row.runs)
    return "pass" if worst <= tolerance(row.budget) else "FAIL"


def format_table(rows: list[Row]) -> list[str]:
    header = (f"{'tool':<10} {'device':<6} {'load':<5} {'budget':>7} {'runs':>4} {'median err':>10} "
              f"{'worst err':>10} {'inside med':>10} {'tolerance':>9} {'acc':>6}  result")
    lines = [header, "-" * len(header)]
    for row in rows:
        ok = [r for r in row.runs if r.returncode == 0 and r.elapsed_s is not None]
        line = f"{row.tool:<10} {row.device:<6} {'yes' if row.load else 'no':<5} {row.budget:>7g} {len(row.runs):>4}"
        if ok:
            errors = [r.wall_s - row.budget for r in ok]
            inside = statistics.median(r.elapsed_s - row.budget for r in ok)
            accs = [r.accuracy for r in ok if r.accuracy is not None]
            acc = f"{statistics.median(accs):.3f}" if accs else "-"
            line += f" {statistics.median(errors):>+10.3f} {max(errors, key=abs):>+10.3f} {inside:>+10.3f}"
        else:
            line += f" {'-':>10} {'-':>10} {'-':>10}"
            acc = "-"
        lines.append(f"{line} {tolerance(row.budget):>9.3f} {acc:>6}  {verdict(row)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", help="budgets in seconds (default 10 30 120; quick: 12)")
    parser.add_argument("--runs", type=int, help="runs per budget (default 3; quick: 1)")
    parser.add_argument("--load-budget", type=float,
                        help="budget repeated under competing load (default 30; quick: 12)")
    parser.add_argument("--load-at", type=float, default=0.4,
                        help="fraction of the budget at which the competing load starts (default 0.4)")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"),
                        help="devices to run on (default: cpu, and cuda when torch.cuda.is_available())")
    parser.add_argument("--no-peer", action="store_true", help="skip the Lightning max_time peer")
    parser.add_argument("--quick", action="store_true", help="smoke run: one 12 s run of each kind")
    args = parser.parse_args()
    budgets = args.budgets if args.budgets is not None else ([12.0] if args.quick else [10.0, 30.0, 120.0])
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    load_budget = args.load_budget if args.load_budget is not None else (12.0 if args.quick else 30.0)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda was asked for but torch.cuda.is_available() is False")
    if runs < 1 or min(budgets + [load_budget]) <= 0 or not 0 <= args.load_at < 1:
        parser.error("--runs must be >= 1, budgets > 0 and --load-at in [0, 1)")

    print(f"command: {shlex.join(sys.orig_argv)}")
    lightning = None if args.no_peer else lightning_version()
    for line in machine_info(devices, lightning):
        print(line)
    tools = ["timebudget"] + (["lightning"] if lightning else [])
    for tool in tools:
        example = shlex.join(command(tool, budgets[0], devices[0], Path("TMP")))
        print(f"{tool} runs (TMP: a fresh temporary folder each): {example}")
    print(f"competing load: {usable_cores()} x `python -c '{BUSY_LOOP}'` from {args.load_at:.0%} of the budget to exit")
    rows: list[Row] = []
    for device in devices:
        for tool in tools:
            rows += [measure(tool, device, b, runs, None) for b in budgets]
            rows.append(measure(tool, device, load_budget, runs, args.load_at))
    print()
    print("error = outside wall time - budget (positive = overshoot); worst = the run with the largest |error|; "
          "inside = summary.json elapsed_s - budget")
    for line in format_table(rows):
        print(line)
    return 1 if any(r.tool == "timebudget" and verdict(r) != "pass" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
