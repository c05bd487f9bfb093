"""Test accuracy within a fixed wall-clock budget: every selection strategy and the schedule baselines, side by side.

Variants: ``full`` (uniform, linear decay by time), the schedule baselines ``full`` with ``step`` and with
``constant`` learning rate (what a plain time-capped loop gives), ``random`` (RS2), ``infobatch``, ``hard``,
``curriculum``, ``selective``, and the noisy-sample filter on ``full`` and on ``selective``. Data sets:

- ``digits``: scikit-learn's 8x8 digits (1437 training images);
- ``digits-noisy``: the same with 20% of the training labels flipped to another class (fixed seed; test labels clean);
- ``hard-synthetic``: 8x8 images of 10 classes, 85% redundant easy samples (a class prototype plus noise) and 15%
  hard ones from four rare modes per class (a weak trace of the prototype in a different pattern); fixed generator.

Budgets run from about one pass over the data to many passes (on a 2-core CPU); the data sets, budgets and seeds were
fixed before any comparison. Every run is an in-process ``timebudget.trainer.train`` call, its budget counted from
the call, after one untimed warm-up call (imports, first allocations). Within each (data set, budget, seed) the
variants run in a shuffled order, so changes in machine load hit all of them alike. Torch uses one thread by
default: on a shared machine, two threads on two busy cores make step times jump by 10x and more.

The table gives, per variant and budget, the test accuracy (mean ± std over seeds, in %), and the realised share of
samples trained per epoch, passes over the data, and time spent scoring, ranking and building subsets as % of the
budget. A goal check follows (issue 3): selective >= the best of full, random and infobatch at every budget and
+1 point at the smallest budget and under label noise; linear beats step and constant at small budgets; scoring
<= 2% of the budget.

Full run: ``python benchmarks/budget_accuracy.py`` (about 12 minutes on a 2-core CPU); smoke run: ``--quick``.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timebudget import data
from timebudget.config import Config
from timebudget.trainer import train

# name -> Config overrides; the first three are the references of the goal check
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"strategy": "full"},
    "random": {"strategy": "random"},
    "infobatch": {"strategy": "infobatch"},
    "hard": {"strategy": "hard"},
    "curriculum": {"strategy": "curriculum"},
    "selective": {"strategy": "selective"},
    "full+filter": {"strategy": "full", "filter_noisy": True},
    "selective+filter": {"strategy": "selective", "filter_noisy": True},
    "full/step": {"strategy": "full", "schedule": "step"},
    "full/constant": {"strategy": "full", "schedule": "constant"},
}
REFERENCES = ("full", "random", "infobatch")
BUDGETS = {"digits": [0.3, 0.6, 1.2, 2.4], "digits-noisy": [0.3, 0.6, 1.2, 2.4], "hard-synthetic": [1.0, 2.0, 4.0, 8.0]}
QUICK_BUDGETS = {"digits": [0.4, 1.0], "digits-noisy": [0.4, 1.0], "hard-synthetic": [1.0, 2.0]}
SEEDS = [0, 1, 2]
NOISE_RATE = 0.2


# --- data sets -----------------------------------------------------------------------------------------------------
def write_noisy_digits(path: Path, rate: float = NOISE_RATE, seed: int = 0) -> None:
    """Digits with ``rate`` of the training labels replaced by a different class, chosen at random."""
    x_train, y_train, x_test, y_test = data.digits_arrays()
    g = np.random.default_rng(seed)
    flip = g.permutation(len(y_train))[: round(rate * len(y_train))]
    y_noisy = y_train.copy()
    y_noisy[flip] = (y_train[flip] + g.integers(1, 10, len(flip))) % 10
    np.savez(path, x_train=x_train, y_train=y_noisy, x_test=x_test, y_test=y_test)


def write_hard_synthetic(
    path: Path, seed: int = 2024, n_train: int = 4000, n_test: int = 2000, hard_share: float = 0.15
) -> None:
    """10 classes of 8x8 images: most samples are a class prototype plus noise (redundant and easy); ``hard_share``
    come from four rare modes per class, each a weak trace of the prototype in its own pattern (few samples each,
    learnt only with repeated exposure). Train and test follow the same distribution."""
    g = np.random.default_rng(seed)
    classes, modes, size = 10, 4, 8
    prototype = g.normal(size=(classes, size, size))
    rare = 0.3 * prototype[:, None] + 0.95 * g.normal(size=(classes, modes, size, size))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = g.integers(0, classes, n)
        hard = g.random(n) < hard_share
        centre = np.where(hard[:, None, None], rare[y, g.integers(0, modes, n)], prototype[y])
        return (centre + g.normal(size=(n, size, size))).astype(np.float32), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def data_specs(folder: Path) -> dict[str, str]:
    write_noisy_digits(folder / "digits-noisy.npz")
    write_hard_synthetic(folder / "hard-synthetic.npz")
    return {"digits": "digits", "digits-noisy": str(folder / "digits-noisy.npz"),
            "hard-synthetic": str(folder / "hard-synthetic.npz")}


# --- runs ------------------------------------------------------------------------------------------------------------
@dataclass
class Result:
    accuracy: float
    kept: float  # share of the data trained per epoch, averaged over epochs
    passes: float
    scoring: float  # seconds_scoring as a share of the budget


def run_one(spec: str, budget: float, seed: int, overrides: dict[str, Any], device: str, out: Path) -> Result:
    config = Config(seconds=budget, data=spec, seed=seed, quiet=True, device=device, out=str(out), **overrides)
    s = train(config).summary
    offered = s["epochs"] * s["n_train"]
    return Result(
        accuracy=s["test_metrics"]["accuracy"],
        kept=1.0 - s["samples_skipped"] / offered if offered else 1.0,
        passes=s["passes"],
        scoring=s["seconds_scoring"] / budget,
    )


def run_all(
    specs: dict[str, str], budgets: dict[str, list[float]], seeds: list[int], device: str, folder: Path
) -> dict[tuple[str, float, str], list[Result]]:
    results: dict[tuple[str, float, str], list[Result]] = {}
    blocks = [(d, b, s) for d in specs for b in budgets[d] for s in seeds]
    started = time.perf_counter()
    for i, (dataset, budget, seed) in enumerate(blocks):
        order = list(VARIANTS)
        random.Random(f"{dataset}-{budget}-{seed}").shuffle(order)
        for name in order:
            out = folder / "runs" / f"{dataset}-{budget}-{seed}-{name.replace('/', '-')}"
            result = run_one(specs[dataset], budget, seed, VARIANTS[name], device, out)
            results.setdefault((dataset, budget, name), []).append(result)
        print(f"[{i + 1}/{len(blocks)}] {dataset} {budget:g} s seed {seed} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    return results


# --- report ----------------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[tuple[str, float, str], list[Result]], dataset: str, budgets: list[float]) -> str:
    head = f"{'variant':<17}" + "".join(f"{f'{b:g} s':>28}" for b in budgets)
    sub = f"{'':<17}" + "".join(f"{'acc %':>12}{'kept':>5}{'pass':>6}{'scr%':>5}" for _ in budgets)
    lines = [head, sub]
    for name in VARIANTS:
        cells = []
        for b in budgets:
            rs = results[(dataset, b, name)]
            acc, sd = mean_std([100 * r.accuracy for r in rs])
            kept = statistics.fmean(r.kept for r in rs)
            passes = statistics.fmean(r.passes for r in rs)
            scoring = 100 * statistics.fmean(r.scoring for r in rs)
            cells.append(f"{acc:>6.1f} ±{sd:>4.1f}{kept:>5.2f}{passes:>6.1f}{scoring:>5.1f}")
        lines.append(f"{name:<17}" + "".join(f"{c:>28}" for c in cells))
    return "\n".join(lines)


def accuracy(results: dict[tuple[str, float, str], list[Result]], key: tuple[str, float, str]) -> float:
    return 100 * statistics.fmean(r.accuracy for r in results[key])


def goals(results: dict[tuple[str, float, str], list[Result]], budgets: dict[str, list[float]]) -> list[str]:
    """The issue's goals, each checked on the means."""
    lines = []
    for dataset, bs in budgets.items():
        for b in bs:
            best_name = max(REFERENCES, key=lambda n: accuracy(results, (dataset, b, n)))
            gap = accuracy(results, (dataset, b, "selective")) - accuracy(results, (dataset, b, best_name))
            needed = 1.0 if b == bs[0] or dataset == "digits-noisy" else 0.0
            verdict = "met" if gap >= needed else "NOT met"
            lines.append(f"selective vs best of full/random/infobatch ({best_name}), {dataset} {b:g} s: "
                         f"{gap:+.1f} points (goal >= {needed:+.0f}): {verdict}")
    for dataset, bs in budgets.items():
        for b in bs[:2]:
            linear = accuracy(results, (dataset, b, "full"))
            rival = max(accuracy(results, (dataset, b, n)) for n in ("full/step", "full/constant"))
            verdict = "met" if linear > rival else "NOT met"
            lines.append(f"linear vs best of step/constant, {dataset} {b:g} s: {linear - rival:+.1f} points: {verdict}")
    worst = max((statistics.fmean(r.scoring for r in rs), key) for key, rs in results.items())
    verdict = "met" if worst[0] <= 0.02 else "NOT met"
    lines.append(f"largest mean scoring overhead: {100 * worst[0]:.2f}% of the budget ({' '.join(map(str, worst[1]))}):"
                 f" {verdict}")
    return lines


def parse_budgets(items: list[str] | None, default: dict[str, list[float]]) -> dict[str, list[float]]:
    budgets = {k: list(v) for k, v in default.items()}
    for item in items or []:
        name, _, values = item.partition("=")
        if name not in budgets or not values:
            raise SystemExit(f"--budgets expects NAME=S,S,... with NAME in {', '.join(budgets)}; got {item!r}")
        budgets[name] = [float(v) for v in values.split(",")]
    return budgets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: two budgets per data set, two seeds")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {SEEDS}; --quick: 0 1)")
    parser.add_argument("--budgets", nargs="+", metavar="NAME=S,S", help="budgets in seconds for a data set")
    parser.add_argument("--datasets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see the module docstring)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budgets = parse_budgets(args.budgets, QUICK_BUDGETS if args.quick else BUDGETS)
    budgets = {d: budgets[d] for d in args.datasets}
    seeds = args.seeds or ([0, 1] if args.quick else SEEDS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        specs = {d: s for d, s in data_specs(folder).items() if d in budgets}
        train(Config(seconds=5, quiet=True, device=args.device, out=str(folder / "warmup")))  # imports, allocations
        results = run_all(specs, budgets, seeds, args.device, folder)
    print(f"timebudget budget_accuracy: {len(seeds)} seeds {seeds}, device {args.device}, torch threads {args.threads}")
    for dataset, bs in budgets.items():
        print(f"\n== {dataset} ==\n{table(results, dataset, bs)}")
    print("\n== goals ==")
    print("\n".join(goals(results, budgets)))
    if args.json:
        raw = {f"{d}|{b:g}|{n}": [r.__dict__ for r in rs] for (d, b, n), rs in results.items()}
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
