"""What counting near copies costs (``timebudget.dedup``): per number of rows, projecting them, counting every pair
once (what a run does), comparing every row with every row (what it did before session 24, with today's byte sums),
and what the 256-row screen predicted for the count, which the budget rule acts on; one CPU thread, medians of
``--repeats``, the two counts interleaved.

Run: ``python benchmarks/dedup_count.py`` (about a minute; ``--rows 4000 12000`` to choose sizes).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timebudget import dedup  # noqa: E402


def timed(fn: Callable[..., object], *args: object) -> float:
    """Seconds one call of ``fn`` took."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4000, 12000, 50000])
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print(f"{'rows':>7} {'project ms':>11} {'pairs once ms':>14} {'every pair twice ms':>20} {'once/twice':>11} "
          f"{'screen predicted ms':>20}")
    for n in args.rows:
        x = torch.rand(n, args.features, generator=g)
        directions = torch.randn(args.features, dedup.DIMS, generator=g) / dedup.DIMS ** 0.5
        project, once, twice, predicted = [], [], [], []
        for _ in range(args.repeats if n < 30000 else 2):
            start = time.perf_counter()
            points, _ = dedup.project(x, directions, None)
            project.append(time.perf_counter() - start)
            pairs = torch.randint(n, (2, dedup.PAIRS), generator=g)  # the run's scale: the median random pair
            radius = dedup.RADIUS * float((points[pairs[0]] - points[pairs[1]]).norm(dim=1).median())
            screened = points[torch.randperm(n, generator=g)[:dedup.SCREEN]]
            predicted.append(dedup.count_seconds(timed(dedup._within, screened, points, radius), dedup.SCREEN, n))
            once.append(timed(dedup._count_all, points, radius))
            twice.append(timed(dedup._within, points, points, radius))
        ratio = statistics.median(a / b for a, b in zip(once, twice))
        ms = [1e3 * statistics.median(t) for t in (project, once, twice, predicted)]
        print(f"{n:>7} {ms[0]:>11.1f} {ms[1]:>14.1f} {ms[2]:>20.1f} {ratio:>11.2f} {ms[3]:>20.1f}", flush=True)


if __name__ == "__main__":
    main()
