"""One process against several under ``torchrun`` (gloo on the CPU, NCCL on CUDA), at the same wall-clock budget.

Each run is a real ``torchrun --standalone --nproc_per_node N -m timebudget train --seconds B`` timed from outside
(``time.perf_counter`` from just before the spawn to torchrun's exit), so the deadline error includes torchrun's own
start-up and exit; the time from ``summary.json``'s ``elapsed_s`` to the launcher's exit is listed next to what the
run kept free for torchrun's exit (``launcher_exit_s``). Besides the deadline error: samples per second inside the
training window (``summary.json``'s ``samples_per_s``, all ranks together) with the ratio to one process paired round
by round, the test accuracy, and the steps. A plain ``python -m timebudget`` run (no torchrun) is the single-process
reference. Modes run interleaved round by round (odd rounds in reverse order), one OpenMP thread per process on the
CPU. ``--independent`` adds, for each N > 1, N plain runs started at once, each with one rank's batch: their samples
per second summed are what N processes reach on this machine when they share only the hardware, the ceiling of any
N-process run.

Goals (issue 15): the deadline as precise as with one process; N processes >= 0.9 N x the samples per second of one
where the machine has the cores; the same accuracy or better at equal budget.

    python benchmarks/distributed.py                     # digits/cnn, 40 s, 4 rounds: plain, torchrun 1 and 2 procs
    python benchmarks/distributed.py --quick             # one round
    python benchmarks/distributed.py --data synthetic --model cnn --batch-size 128 --seconds 60 --rounds 3
    python benchmarks/distributed.py --data synthetic --per-rank-batch 128 --seconds 60 --rounds 3 --no-plain
    python benchmarks/distributed.py --data synthetic --per-rank-batch 128 --seconds 30 --no-plain --independent
    python benchmarks/hard_data.py digits28 synthetic20k --out data   # sets with long steps and long epochs
    python benchmarks/distributed.py --data data/digits28.npz --per-rank-batch 128 --seconds 30 --rounds 3 --no-plain
    python benchmarks/distributed.py --device cuda --procs 1 2 4 --seconds 60   # on a machine with several GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    wall_s: float
    returncode: int
    summary: dict | None
    stderr_tail: str


@dataclass
class Mode:
    """One way of launching: plain python (``procs`` 0), torchrun with ``procs`` processes, or ``independent`` plain
    runs at once (the machine's ceiling for that many processes: they share only the hardware)."""

    procs: int
    independent: int = 0
    runs: list[Run] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.independent:
            return f"{self.independent} independent"
        return "python -m timebudget" if self.procs == 0 else f"torchrun x{self.procs}"


def command(procs: int, args: argparse.Namespace, out: Path, share: int = 1) -> list[str]:
    """The run's command line; ``share`` > 1: a plain run with one rank's batch of a ``share``-process torchrun."""
    train = ["train", "--seconds", f"{args.seconds:g}", "--data", args.data, "--model", args.model,
             "--device", args.device, "--quiet", "--out", str(out)]
    if args.strategy:
        train += ["--strategy", args.strategy]
    batch = args.per_rank_batch * max(procs, 1) if args.per_rank_batch else args.batch_size
    if batch and share > 1 and not args.per_rank_batch:
        batch //= share
    if batch:
        train += ["--batch-size", str(batch)]
    if procs == 0:
        return [sys.executable, "-m", "timebudget", *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
            "-m", "timebudget", *train]


def worker_env() -> dict[str, str]:
    """One OpenMP thread per process, and this repository importable."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_once(cmd: list[str], out: Path, timeout: float) -> Run:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else None
    return Run(wall, proc.returncode, summary, proc.stderr[-500:])


def run_independent(count: int, args: argparse.Namespace, out: Path, timeout: float) -> Run:
    """``count`` plain runs started at once: samples per second summed, the latest wall and elapsed time, the first
    run's accuracy, each run's steps."""
    outs = [out / str(i) for i in range(count)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(command(0, args, o, share=count), env=worker_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for o in outs]
    errors = [p.communicate(timeout=timeout)[1] for p in procs]
    wall = time.perf_counter() - t0
    summaries = [json.loads((o / "summary.json").read_text()) if (o / "summary.json").exists() else None for o in outs]
    code = max(p.returncode for p in procs)
    if code != 0 or not all(summaries):
        return Run(wall, code or 1, None, " | ".join(e[-200:] for e in errors))
    summary = {**summaries[0], "samples_per_s": sum(x["samples_per_s"] for x in summaries),
               "elapsed_s": max(x["elapsed_s"] for x in summaries), "rank_steps": [x["steps"] for x in summaries],
               "startup_s": max(x["startup_s"] for x in summaries)}
    return Run(wall, 0, summary, "")


def median_iqr(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) < 4:
        return f"{statistics.median(values):.3g}" + (f" [{min(values):.3g}, {max(values):.3g}]" if len(values) > 1
                                                     else "")
    q = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.3g} [{q[0]:.3g}, {q[2]:.3g}]"


def table(modes: list[Mode], budget: float) -> list[str]:
    reference = next((m for m in modes if m.procs == 1), modes[0])  # the same launcher with one process
    head = ("| mode | ok | wall - B (s): median, worst | elapsed_s - B | exit after summary: measured, reserved | "
            "samples/s: median [range or IQR] | ratio to " + reference.name + " (paired) | accuracy | steps | "
            "startup_s |")
    lines = [head, "|" + " --- |" * 10]
    for mode in modes:
        good = [r for r in mode.runs if r.returncode == 0 and r.summary]
        errors = [r.wall_s - budget for r in good]
        worst = max(errors, key=abs) if errors else float("nan")
        rates = [r.summary["samples_per_s"] for r in good]
        ratios = [r.summary["samples_per_s"] / ref.summary["samples_per_s"]
                  for r, ref in zip(mode.runs, reference.runs) if r.summary and ref.summary]
        acc = [r.summary["test_metrics"].get("accuracy", float("nan")) for r in good]
        acc_text = f"{statistics.mean(acc):.4f} ± {statistics.pstdev(acc):.4f}" if acc else "-"
        lines.append(
            f"| {mode.name} | {len(good)}/{len(mode.runs)} | {median_iqr(errors)}, {worst:+.2f} | "
            f"{median_iqr([r.summary['elapsed_s'] - budget for r in good])} | "
            f"{median_iqr([r.wall_s - r.summary['elapsed_s'] for r in good])}, "
            f"{median_iqr([r.summary.get('launcher_exit_s', 0.0) for r in good])} | {median_iqr(rates)} | "
            f"{median_iqr(ratios)} | {acc_text} | {median_iqr([r.summary['steps'] for r in good])} | "
            f"{median_iqr([r.summary['startup_s'] for r in good])} |"
        )
    return lines


def machine() -> list[str]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"machine: {platform.node()} {platform.machine()}, {cores} usable cores, load average {load[0]:.2f} at "
            f"start, {gpus} GPUs; torch {torch.__version__}, python {platform.python_version()}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="the budget B of every run (default 40)")
    parser.add_argument("--rounds", type=int, default=4, help="runs of each mode, interleaved (default 4)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2],
                        help="torchrun process counts to compare (default 1 2)")
    parser.add_argument("--no-plain", action="store_true", help="leave out the plain python -m timebudget runs")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--strategy", help="the runs' --strategy (default: the trainer's default)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=int, help="the global batch (each of N ranks trains batch / N): the same "
                       "recipe at every world size (strong scaling)")
    batch.add_argument("--per-rank-batch", type=int, help="each process trains this batch (global batch N x it, as "
                       "DDP is usually scaled): the same work per step and per collective (weak scaling)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--independent", action="store_true",
                        help="also N plain runs at once for each N > 1 of --procs, each with one rank's batch: what N "
                             "processes reach on this machine when they share nothing but the hardware")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rounds < 1 or min(args.procs) < 1:
        parser.error("--seconds, --rounds and --procs must be positive")
    rounds = 1 if args.quick else args.rounds
    modes = ([] if args.no_plain else [Mode(0)]) + [Mode(n) for n in args.procs]
    modes += [Mode(0, independent=n) for n in args.procs if args.independent and n > 1]
    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print("\n".join(machine()))
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                out = Path(tmp) / f"{mode.procs}-{mode.independent}-{r}"
                if mode.independent:
                    run = run_independent(mode.independent, args, out, timeout=args.seconds + 120)
                else:
                    run = run_once(command(mode.procs, args, out), out, timeout=args.seconds + 120)
                mode.runs.append(run)
                info = (f"wall {run.wall_s:.2f} s, exit after summary {run.wall_s - run.summary['elapsed_s']:.2f} s "
                        f"(reserved {run.summary.get('launcher_exit_s', 0.0):.2f}), "
                        f"{run.summary['samples_per_s']:.0f} samples/s, steps {run.summary['rank_steps']}"
                        if run.summary else f"failed: {run.stderr_tail!r}")
                print(f"round {r}: {mode.name}: {info}", flush=True)
    batch = (f"{args.per_rank_batch} per process" if args.per_rank_batch
             else f"{args.batch_size or 'default'} (global)")
    print(f"\nB = {args.seconds:g} s, data {args.data}, model {args.model}, batch {batch}, device {args.device}, "
          f"one thread per process, {rounds} rounds")
    print("\n".join(table(modes, args.seconds)))
    print("\n".join(machine()))
    return 0 if all(r.returncode == 0 for m in modes for r in m.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
