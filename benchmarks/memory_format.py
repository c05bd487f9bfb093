"""NCHW against NHWC (``channels_last``) on the CPU: whole ``timebudget.train`` runs at the same budget, paired.

Why: ``channels_last: auto`` turns NHWC on for the built-in convolutional models on the CPU. This script is the
measurement behind that default. For each case (data, model) and seed it runs ``--set channels_last=false`` and
``--set channels_last=true`` for the same seconds, one after the other in a forked child each (the order alternates
from seed to seed, so a machine that drifts hits both alike), and reports samples per second inside the training
window, the paired ratio NHWC / NCHW (median and range over seeds) and the test metric of both. One torch thread.

    python benchmarks/memory_format.py                       # 3 cases, 6 seeds, 8 s per run: ~6 min
    python benchmarks/memory_format.py --cases digits --seeds 0 1 --seconds 5
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = {  # name: (data, model)
    "digits": ("digits", "cnn"),  # the README's default job
    "synthetic": ("synthetic", "cnn"),  # 3x16x16
    "cifar-shaped": ("cifar-shaped", "cnn"),  # 3x32x32, written by benchmarks/throughput.py's cifar_shaped
}


def _child(data: str, model: str, seconds: float, seed: int, nhwc: bool, out: str, pipe: Connection) -> None:
    import torch

    from timebudget import Config, train

    torch.set_num_threads(1)
    try:
        s = train(Config(seconds=seconds, data=data, model=model, seed=seed, out=out, quiet=True,
                         channels_last=nhwc)).summary
        metric = s["test_metrics"].get("accuracy", s["test_metrics"].get("rmse"))
        pipe.send({"sps": s["samples_per_s"], "metric": metric, "channels_last": s["channels_last"]})
    except Exception as exc:  # reported in the table, never silently dropped
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})


def run(data: str, model: str, seconds: float, seed: int, nhwc: bool, out: str) -> dict:
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(data, model, seconds, seed, nhwc, out, send))
    child.start()
    result = receive.recv()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--seconds", type=float, default=8.0, help="budget of every run (default 8)")
    args = parser.parse_args()
    from benchmarks.throughput import cifar_shaped

    with tempfile.TemporaryDirectory() as tmp:
        cifar = cifar_shaped(Path(tmp) / "cifar_shaped.npz")
        print(f"memory_format: {args.seconds:g} s per run, seeds {args.seeds}, load average "
              f"{os.getloadavg()[0]:.2f}\n")
        print("| case | NCHW samples/s | NHWC samples/s | NHWC / NCHW (paired): median [range] | metric NCHW | "
              "metric NHWC | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in args.cases:
            data, model = CASES[name]
            data = cifar if data == "cifar-shaped" else data
            rows: dict[bool, list[dict]] = {False: [], True: []}
            for i, seed in enumerate(args.seeds):
                for nhwc in (False, True) if i % 2 == 0 else (True, False):
                    rows[nhwc].append(run(data, model, args.seconds, seed, nhwc, f"{tmp}/{name}-{seed}-{nhwc}"))
            pairs = [(a, b) for a, b in zip(rows[False], rows[True]) if "error" not in a and "error" not in b]
            errors = [r["error"] for r in rows[False] + rows[True] if "error" in r]
            if not pairs:
                print(f"| {name} | | | | | | {len(errors)}: {errors[0][:80]} |")
                continue
            ratios = [b["sps"] / a["sps"] for a, b in pairs]
            nchw = statistics.median(a["sps"] for a, _ in pairs)
            nhwc_sps = statistics.median(b["sps"] for _, b in pairs)
            metric = [statistics.mean(p[i]["metric"] for p in pairs) for i in (0, 1)]
            print(f"| {name} | {nchw:,.0f} | {nhwc_sps:,.0f} | {statistics.median(ratios):.2f} "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}] | {metric[0]:.4f} | {metric[1]:.4f} | {len(errors)} |",
                  flush=True)
        print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
