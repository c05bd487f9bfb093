"""Throughput: timebudget against a plain hand-written PyTorch loop, side by side, plus the cost of ranking.

Part 1 runs, for each (data, model) case, a plain loop (below: written for clarity and speed, the baseline) and
``timebudget.train`` with ``--strategy full`` and ``--strategy selective``, interleaved round by round so that machine
load hits all three alike, each for the same number of seconds on the same model, data and batch size. It reports
samples per second (samples trained / seconds inside the training loop) and the ratio to the plain loop. For
``selective`` the samples it chose to skip are not counted (they were not trained), and a second ratio charges its
scoring time too.

Part 2 times one epoch plan (ranking plus subset building) of each selection strategy on a score table of N samples.

    python benchmarks/throughput.py                 # CPU cases, 6 s per run, 8 rounds
    python benchmarks/throughput.py --quick         # smoke run
    python benchmarks/throughput.py --devices cuda  # the CUDA cases: the fast config's step, resnet18 in bf16
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from timebudget import accel, augment, data, models, strategies
from timebudget.config import Config
from timebudget.errors import BudgetTooSmall
from timebudget.scores import ScoreTable
from timebudget.trainer import train

FAST_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "cifar10-fast.yaml"


@dataclass(frozen=True)
class Case:
    """One comparison: the same data, model and options for the plain loop and for timebudget."""

    label: str
    spec: str
    model: str
    device: str
    precision: str = "fp32"
    batch_size: int = 128
    channels_last: bool = False
    compile: bool = False
    augment: bool = False
    label_smoothing: float = 0.0

    def config(self) -> dict:
        return {"model": self.model, "device": self.device, "precision": self.precision,
                "batch_size": self.batch_size, "channels_last": self.channels_last, "compile": self.compile,
                "augment": self.augment, "label_smoothing": self.label_smoothing}


def device_sync(device: torch.device) -> None:
    """Wait for the device's queued work: a host clock read after an asynchronous launch times only the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(
    x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module, case: Case, lr: float, seconds: float, optimizer: str
) -> float:
    """The baseline: data resident on the device, shuffled index batches, SGD with Nesterov momentum, a linear
    learning-rate decay by time, and the case's options (autocast, channels_last, compile, batched crop and flip).
    ``optimizer``: ``same`` runs the update timebudget runs (``accel.optimizer_options``: fused where torch has it),
    so the ratio is the loop's own overhead; ``default`` runs torch's default update.
    Returns samples per second inside the loop (after warm-up steps, which also compile)."""
    device = torch.device(case.device)
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    x, y = x.to(device).contiguous(memory_format=memory_format), y.to(device)
    model.to(device, memory_format=memory_format).train()
    forward = torch.compile(model, dynamic=False) if case.compile else model
    options = accel.optimizer_options(list(model.parameters())) if optimizer == "same" else {}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, **options)
    dtype = torch.bfloat16 if case.precision == "bf16" else None
    aug_gen = torch.Generator(device).manual_seed(0)

    def step(idx: torch.Tensor) -> None:
        xb = augment.crop_flip(x[idx], aug_gen) if case.augment else x[idx]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(forward(xb), y[idx], label_smoothing=case.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    warm = torch.arange(case.batch_size, device=device) % len(x)
    for _ in range(3 if case.compile else 2):
        step(warm)
    device_sync(device)
    samples, start = 0, time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for idx in torch.randperm(len(x), device=device).split(case.batch_size):
            if len(idx) < case.batch_size:
                break
            for group in opt.param_groups:
                group["lr"] = lr * max(0.0, 1 - (time.perf_counter() - start) / seconds)
            step(idx)
            samples += len(idx)
            if time.perf_counter() >= end:
                break
    device_sync(device)
    return samples / (time.perf_counter() - start)


def cifar_shaped(path: Path, n: int = 5000) -> str:
    """A CIFAR-shaped synthetic set (3x32x32 float, 10 classes), written as an .npz the CLI can read too."""
    g = np.random.default_rng(0)
    protos = g.normal(size=(10, 3, 32, 32)).astype(np.float32)
    ys = [g.integers(0, 10, n), g.integers(0, 10, n // 5)]
    xs = [(protos[y] * 0.5 + g.normal(size=(len(y), 3, 32, 32))).astype(np.float32) for y in ys]
    np.savez(path, x_train=xs[0], y_train=ys[0], x_test=xs[1], y_test=ys[1])
    return str(path)


def throughput_cases(args: argparse.Namespace, tmp: Path) -> None:
    cifar = cifar_shaped(tmp / "cifar_shaped.npz", args.rows)
    # the fast config's step (configs/cifar10-fast.yaml), without weight averaging, which the plain loop lacks
    fast = yaml.safe_load(FAST_CONFIG.read_text())
    fast_options = {key: fast[key] for key in ("batch_size", "channels_last", "compile", "augment", "label_smoothing")}
    cases = [Case("digits", "digits", "cnn", "cpu"), Case("cifar-shaped", cifar, "cnn", "cpu"),
             Case("cifar-shaped", cifar, "resnet18", "cpu"),
             Case("cifar-shaped", cifar, fast["model"], "cuda", fast["precision"], **fast_options),
             Case("cifar-shaped", cifar, "resnet18", "cuda", "bf16")]
    cases = [case for case in cases if case.device in args.devices and (not args.models or case.model in args.models)]
    print("\nRatios are the median over rounds of the ratio to the plain loop in the same round, [interquartile range]")
    print(f"{'data':<14}{'model':<10}{'device':<7}{'prec':<6}{'batch':>6}{'options':>22}{'plain/s':>10}{'full/s':>10}"
          f"{'ratio':>20}{'selective/s':>13}{'ratio':>20}{'incl. scoring':>20}")
    for case in cases:
        bundle = data.load(case.spec)
        rates: dict[str, list[float]] = {"plain": [], "full": [], "selective": [], "charged": []}
        extra = 45.0 if case.compile else 15.0
        for r in range(args.rounds):
            # odd rounds run in reverse order (plain, full, selective; then selective, full, plain): a machine that
            # drifts slower or faster during the benchmark then favours no side
            for run in ("plain", "full", "selective")[::-1 if r % 2 else 1]:
                torch.manual_seed(r)
                if run == "plain":
                    model = models.build(case.model, bundle.input_shape, bundle.num_outputs, bundle.kind)
                    rates["plain"].append(plain_loop(bundle.train.x, bundle.train.y, model, case, 0.1, args.seconds,
                                                     args.plain_optimizer))
                    continue
                # the budget also holds start-up, calibration (seconds for resnet18 on a CPU, or a compilation) and
                # the tail, which the last run measured: the training loop gets about the plain loop's seconds
                cfg = Config(seconds=args.seconds + extra, data=case.spec, strategy=run, quiet=True, seed=r,
                             out=str(tmp / f"{case.label}-{case.model}-{run}-{r}"), **case.config())
                for attempt in range(4):  # a loaded machine can make start-up and calibration several times slower
                    try:
                        s = train(dataclasses.replace(cfg, seconds=args.seconds + extra)).summary
                        break
                    except BudgetTooSmall:
                        if attempt == 3:
                            raise
                        extra *= 2
                extra = s["budget_s"] - s["train_s"]
                rates[run].append(s["samples_per_s"])
                if run == "selective":
                    rates["charged"].append(s["samples_trained"] / (s["train_s"] + s["seconds_scoring"]))
        options = ",".join(name for name, on in (("cl", case.channels_last), ("compile", case.compile),
                                                 ("aug", case.augment), ("ls", case.label_smoothing)) if on) or "-"
        full, sel, charged = (paired_ratios(rates[name], rates["plain"]) for name in ("full", "selective", "charged"))
        print(f"{case.label:<14}{case.model:<10}{case.device:<7}{case.precision:<6}{case.batch_size:>6}{options:>22}"
              + "".join(f"{statistics.median(rates[name]):>10.0f}" for name in ("plain", "full"))
              + f"{full:>20}{statistics.median(rates['selective']):>13.0f}{sel:>20}{charged:>20}", flush=True)
        if args.rounds > 1:  # the spread tells how much of a ratio is the machine's noise
            print("    per round, samples/s: " + "; ".join(
                f"{name} {' '.join(f'{v:.0f}' for v in rates[name])}" for name in ("plain", "full", "selective")),
                flush=True)


def paired_ratios(rates: list[float], plain: list[float]) -> str:
    """The median over rounds of each round's ratio to the plain loop of the same round, and with three or more
    rounds its interquartile range: pairing within a round cancels the machine's slow drifts, which on a shared
    machine move a rate by more than the 2 to 3% the goals resolve."""
    ratios = [rate / base for rate, base in zip(rates, plain)]
    median = f"{statistics.median(ratios):.3f}"
    if len(ratios) < 3:
        return median
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{median} [{low:.2f}-{high:.2f}]"


def ranking_costs(sizes: list[int], device: torch.device) -> None:
    names = [name for name in strategies.STRATEGIES if name != "full"]
    print(f"\nOne epoch plan (ranking + subset building) in seconds, scores on {device}, progress 0.5:")
    widths = [max(12, len(name) + 2) for name in names]  # a column as wide as its name: the header stays readable
    print(f"{'N':>10}" + "".join(f"{name:>{w}}" for name, w in zip(names, widths)) + f"{'argsort':>12}")
    for n in sizes:
        scores = ScoreTable(n, device=device)
        gen = torch.Generator().manual_seed(0)
        scores.record(torch.arange(n), torch.rand(n, generator=gen).to(device) * 3, step=1)
        row = f"{n:>10}"
        for name, width in zip(names, widths):
            strategy = strategies.build(Config(seconds=100, strategy=name), "classification")
            ctx = strategies.EpochContext(epoch=5, progress=0.5, scores=scores, generator=gen, affordable=0.3 * n)
            strategy.plan(ctx)  # first call may allocate state
            device_sync(device)  # the clock brackets this plan's device work alone
            t0 = time.perf_counter()
            strategy.plan(strategies.EpochContext(6, 0.5, scores, gen, 0.3 * n))
            device_sync(device)
            row += f"{time.perf_counter() - t0:>{width}.4f}"
        t0 = time.perf_counter()
        torch.argsort(scores.average)
        device_sync(device)
        row += f"{time.perf_counter() - t0:>12.4f}"
        print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="training seconds per run")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per case (median of paired ratios)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"),
                        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
                        help="which cases to run (default: CPU, and CUDA when available)")
    parser.add_argument("--models", nargs="+", help="only the cases of these models (e.g. resnet18)")
    parser.add_argument("--plain-optimizer", choices=("same", "default"), default="same",
                        help="the plain loop's update: same as timebudget's (fused; default) or torch's default")
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7", help="N for the ranking costs")
    parser.add_argument("--rows", type=int, default=5000,
                        help="training rows of the CIFAR-shaped set (CIFAR-10 has 50,000: on a fast GPU an epoch of "
                             "5,000 lasts tens of milliseconds, and the per-epoch work weighs ten times as much)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 s runs, 1 round, N up to 1e5")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.sizes = 4.0, 1, "1e4,1e5"
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds:g}")
    if args.rows < 1:
        parser.error(f"--rows must be at least 1, got {args.rows}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, devices {' '.join(args.devices)}"
          + (f" ({torch.cuda.get_device_name()})" if "cuda" in args.devices else ""))
    with tempfile.TemporaryDirectory() as tmp:
        throughput_cases(args, Path(tmp))
    for device in args.devices:
        ranking_costs([int(float(s)) for s in args.sizes.split(",")], torch.device(device))


if __name__ == "__main__":
    main()
