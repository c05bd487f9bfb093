"""Where two processes' speed goes under torchrun: the DDP step as the trainer wraps it, with and without its
communication, against one process and against two processes that share nothing.

`distributed.py` measures whole runs; this script takes the training step apart, so the 1.8x goal of issue 15 can be
read against what the machine allows. Each round it starts, one after another:

- ``torchrun x1``: one worker (the reference);
- ``torchrun x2``: two workers, each timing, interleaved in blocks, the same CNN step (the trainer's default model on
  3x16x16 inputs, SGD, in the trainer's memory format: ``--channels-last``, default ``auto``, NHWC on the CPU) in
  three forms: ``exact`` (DDP as :meth:`timebudget.distributed.Group.wrap` builds it: the
  gradients all-reduced every step), ``exact + vote`` (plus the trainer's agreement, :meth:`Group.agree`, after every
  step, as the trainer ran it until session 10; it now agrees every ~0.25 s of steps), and ``no communication`` (the same DDP module with a communication hook that returns the
  local gradient: the ceiling of any exact gradient exchange on this machine);
- ``2 independent``: two single workers at once, each with its own torchrun: what two processes reach when they
  share only the machine.

Samples per second are all workers' together; ratios are to ``torchrun x1`` of the same round. One OpenMP thread per
process. Per-rank batch ``--batch`` (weak scaling, as ``distributed.py --per-rank-batch``).

    python benchmarks/ddp_overhead.py                        # 3 rounds, 128 samples per rank, ~2 min
    python benchmarks/ddp_overhead.py --batch 64 --rounds 5
    python benchmarks/ddp_overhead.py --channels-last false   # the NCHW step (session 9's figures)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORMS = ("exact", "exact + vote", "no communication")


def worker(batch: int, steps: int, blocks: int, memory_format: str) -> None:
    """One torchrun worker: times ``steps`` steps per form and block, prints one JSON line (rank 0 only)."""
    import torch
    from torch import nn

    from timebudget import accel, distributed
    from timebudget.clock import BudgetClock
    from timebudget.models import FASTER_NHWC_ON_CPU, cnn

    torch.set_num_threads(1)
    budget_s = 3600.0
    world = distributed.init("cpu", budget_s, time.monotonic())
    world.attach(BudgetClock(budget_s))
    world.agree_plan(torch.arange(4), None, None)  # the first agreement carries rank 0's progress
    g = torch.Generator().manual_seed(world.rank)
    x, y = torch.randn(batch, 3, 16, 16, generator=g), torch.randint(0, 10, (batch,), generator=g)
    cpu = torch.device("cpu")

    def local_gradient(_state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations here
        done = torch.futures.Future()
        done.set_result(bucket.buffer())
        return done

    forms = FORMS if world.size > 1 else FORMS[:1]
    modules = {}
    for form in forms:
        torch.manual_seed(0)
        model = cnn((3, 16, 16), 10)
        fmt = accel.memory_format(model, memory_format, True, cpu, "cnn" in FASTER_NHWC_ON_CPU)
        x = x.contiguous(memory_format=fmt)
        module = world.wrap(model)
        if form == "no communication":
            module.register_comm_hook(None, local_gradient)
        modules[form] = (module, torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9))

    def step(form: str) -> None:
        module, optimizer = modules[form]
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()
        if form == "exact + vote":
            world.agree(False)

    seconds: dict[str, list[float]] = {form: [] for form in forms}
    for form in forms:
        for _ in range(10):
            step(form)
    for block in range(blocks):
        for form in forms if block % 2 == 0 else forms[::-1]:
            world.any(False)  # start together
            t0 = time.perf_counter()
            for _ in range(steps):
                step(form)
            world.any(False)
            seconds[form].append((time.perf_counter() - t0) / steps)
    if world.rank == 0:
        rates = {form: world.size * batch / statistics.median(s) for form, s in seconds.items()}
        print(json.dumps({"size": world.size, "rates": rates}), flush=True)
    world.close()


def launch(procs: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), __file__,
           "--worker", "--batch", str(args.batch), "--steps", str(args.steps), "--blocks", str(args.blocks),
           "--channels-last", args.channels_last]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, err = proc.communicate(timeout=600)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"ddp_overhead: a worker failed (exit {proc.returncode}): {err[-2000:]}")
    return json.loads(lines[-1])["rates"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="samples per rank and step (default 128)")
    parser.add_argument("--steps", type=int, default=40, help="steps per form and block (default 40)")
    parser.add_argument("--blocks", type=int, default=4, help="blocks per worker, forms interleaved (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three launches (default 3)")
    parser.add_argument("--channels-last", choices=("auto", "true", "false"), default="auto",
                        help="the model's memory format, as the trainer's setting (default auto: NHWC for the cnn)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.batch, args.steps, args.blocks, args.channels_last)
        return
    rows: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    print(f"ddp_overhead: {args.rounds} rounds, {args.batch} samples per rank, {args.steps} steps x {args.blocks} "
          f"blocks per form, channels_last {args.channels_last}; load average {os.getloadavg()[0]:.2f}", flush=True)
    for r in range(args.rounds):
        one = result(launch(1, args))["exact"]
        two = result(launch(2, args))
        pair = [launch(1, args), launch(1, args)]
        independent = sum(result(p)["exact"] for p in pair)
        measured = {"torchrun x1": one, **{f"x2 {form}": rate for form, rate in two.items()},
                    "2 independent": independent}
        for name, rate in measured.items():
            rows.setdefault(name, []).append(rate)
            ratios.setdefault(name, []).append(rate / one)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in measured.items())
              + f"; load {os.getloadavg()[0]:.2f}", flush=True)
    print("\n| launch | samples/s: median [range] | ratio to torchrun x1 (paired): median [range] |")
    print("| --- | --- | --- |")
    for name, rates in rows.items():
        q = ratios[name]
        print(f"| {name} | {statistics.median(rates):,.0f} [{min(rates):,.0f}, {max(rates):,.0f}] | "
              f"{statistics.median(q):.2f} [{min(q):.2f}, {max(q):.2f}] |")


if __name__ == "__main__":
    main()
