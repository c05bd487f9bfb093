"""Start-up: seconds from process start to the first training step, per configuration, from ``summary.json``.

Each run is ``python -m timebudget train`` in a fresh process, as a user runs it; the figures are the ``startup``
block of its summary (process start to the start of training, and its parts). Configurations, interleaved round by
round so that the machine's load hits them alike:

- ``cpu``: the default digits job on the CPU, no compilation;
- ``cpu-compile-cold`` / ``cpu-compile-warm``: the same with ``compile=true``, with a fresh compile cache folder each
  run / with the folder the previous cold run filled;
- with CUDA: ``cuda`` (the default digits job on the GPU), and ``cuda-fast-cold`` / ``cuda-fast-warm`` /
  ``cuda-fast-nocompile``: ``configs/cifar10-fast.yaml`` (airnet, bf16, channels_last, compile) on a CIFAR-shaped
  synthetic set.

A ``floor`` row times what every run pays before timebudget's own work: the interpreter, ``import torch`` and the
first ``torch.optim`` optimizer (which imports ``torch._dynamo``). Budgets are sized from the previous run of the same
configuration, so a run trains only a few seconds past its start-up; a budget found too small is retried with the
minimum the refusal names (with a fresh cache folder for a cold run).

    python benchmarks/startup.py                      # CPU rows (and CUDA rows when available), 5 runs each
    python benchmarks/startup.py --configs cpu --runs 9
    python benchmarks/startup.py --configs cpu-compile-cold cpu-compile-warm --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST_CONFIG = ROOT / "configs" / "cifar10-fast.yaml"
PARTS = ("imports", "data", "model", "compile", "optimizer", "setup", "calibration", "folder")
FLOOR = """
import time
from timebudget.clock import process_start_time
start = process_start_time()
import torch
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
print(time.monotonic() - start)
"""


def cuda_available() -> bool:
    code = "import torch; print(torch.cuda.is_available())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def cifar_shaped(path: Path, n: int = 10000) -> Path:
    """A CIFAR-shaped set (uint8 32x32x3 images, 10 classes) as an .npz, like the real one in size per sample."""
    import numpy as np

    g = np.random.default_rng(0)
    protos = g.integers(0, 256, size=(10, 32, 32, 3))
    ys = [g.integers(0, 10, n), g.integers(0, 10, n // 5)]
    xs = [np.clip(protos[y] * 0.5 + g.normal(64, 40, size=(len(y), 32, 32, 3)), 0, 255).astype(np.uint8) for y in ys]
    np.savez(path, x_train=xs[0], y_train=ys[0], x_test=xs[1], y_test=ys[1])
    return path


def configurations(tmp: Path, cuda: bool) -> dict[str, list[str]]:
    """Each configuration's command-line arguments (without --seconds and --out)."""
    compile_ = ["--set", "compile=true", "--device", "cpu"]
    rows = {"cpu": ["--device", "cpu"], "cpu-compile-cold": compile_, "cpu-compile-warm": compile_}
    if cuda:
        fast = ["--config", str(FAST_CONFIG), "--data", str(cifar_shaped(tmp / "cifar_shaped.npz")), "--device", "cuda"]
        rows |= {"cuda": ["--device", "cuda"], "cuda-fast-nocompile": [*fast, "--set", "compile=false"],
                 "cuda-fast-cold": fast, "cuda-fast-warm": fast}
    return rows


def run_once(args: list[str], budget: float, out: Path, cache: Path | None) -> tuple[dict, float]:
    """One run; returns its summary's startup block and the budget it needed. A refusal (budget too small) is
    retried with the minimum it names, from a fresh cache folder when the cache was meant to be cold."""
    extra = ["--set", f"compile_cache={cache}"] if cache is not None else []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # the run chooses its folder (compile_cache)
    for attempt in range(4):
        proc = subprocess.run([sys.executable, "-m", "timebudget", "train", "--seconds", f"{budget:.1f}", "--quiet",
                               "--out", str(out), *args, *extra], capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode == 0:
            return json.loads((out / "summary.json").read_text())["startup"], budget
        minimum = re.search(r"minimum .* about (\d+) s", proc.stderr)
        if proc.returncode != 3 or not minimum:
            raise SystemExit(f"run failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-2000:]}")
        budget = 1.5 * float(minimum.group(1)) + 2
        if cache is not None and "cold" in out.name:
            cache = cache.with_name(cache.name + f"-retry{attempt}")
            extra = ["--set", f"compile_cache={cache}"]
    raise SystemExit(f"run refused four times: {' '.join(args)}")


def floor_seconds() -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per configuration (medians and ranges)")
    parser.add_argument("--configs", nargs="+", help="only these rows (default: all that this machine can run)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    cuda = cuda_available()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '1')}, CUDA {'yes' if cuda else 'no'}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = configurations(tmp, cuda)
        unknown = set(args.configs or []) - set(rows) - {"floor"}
        if unknown:
            parser.error(f"unknown or unavailable configurations {sorted(unknown)}; here: floor {' '.join(rows)}")
        chosen = [name for name in ["floor", *rows] if not args.configs or name in args.configs]
        results: dict[str, list[dict]] = {name: [] for name in chosen}
        # a first guess; a refused run is retried with the minimum the refusal names, later runs are sized from it
        budgets = {name: 45.0 if name.endswith("cold") else 20.0 if "compile" in name or "fast" in name else 10.0
                   for name in chosen}
        warm_cache: dict[str, Path] = {}
        for r in range(args.runs):
            for name in chosen if r % 2 == 0 else chosen[::-1]:  # alternate the order: drifts favour no row
                if name == "floor":
                    results[name].append({"total_s": floor_seconds()})
                    continue
                family = name.rsplit("-", 1)[0]
                if name.endswith("cold"):
                    cache = tmp / f"cache-{name}-{r}"
                    warm_cache[family] = cache
                elif name.endswith("warm"):
                    cache = warm_cache.get(family, tmp / f"cache-{family}-warm")
                    if family not in warm_cache:  # no cold run of this family: fill the folder once, unrecorded
                        run_once(rows[name], budgets[name], tmp / f"{name}-fill", cache)
                        warm_cache[family] = cache
                else:
                    cache = tmp / "cache-other"
                parts, used = run_once(rows[name], budgets[name], tmp / f"{name}-{r}", cache)
                results[name].append(parts)
                budgets[name] = max(used if name.endswith("cold") else 0.0, 1.3 * parts["total_s"] + 4)
                state = parts.get("compile_cache", {}).get("state", "-")
                print(f"  round {r} {name:<22} start-up {parts['total_s']:.2f} s (cache {state})", flush=True)
    print("\nSeconds from process start to the first training step: median [min-max] over runs; 'over floor' is the "
          "median over rounds of the run's start-up minus the floor's in the same round; parts are medians")
    print(f"{'configuration':<22}{'runs':>5}{'total':>22}{'over floor':>12}  {'cache':<8}"
          + "".join(f"{p:>12}" for p in PARTS))
    floors = [run["total_s"] for run in results.get("floor", [])]
    for name, runs in results.items():
        states = sorted({run.get("compile_cache", {}).get("state", "-") for run in runs})
        over = (f"{statistics.median(r['total_s'] - f for r, f in zip(runs, floors)):>12.2f}"
                if floors and name != "floor" else f"{'-':>12}")
        row = f"{name:<22}{len(runs):>5}{spread([run['total_s'] for run in runs]):>22}{over}  {'/'.join(states):<8}"
        for part in PARTS:
            values = [run[f"{part}_s"] for run in runs if f"{part}_s" in run]
            row += f"{statistics.median(values):>12.3f}" if values else f"{'-':>12}"
        print(row)


if __name__ == "__main__":
    main()
