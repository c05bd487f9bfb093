"""Out-of-the-box quality: ``timebudget train --seconds B --data D`` with no other flag against a plain hand-written
loop with the textbook choices for the data kind, side by side, at the same wall-clock budgets.

The plain loop (in this file, :func:`plain_main`), per data kind:

- images: two conv-BN-ReLU-max-pool stages of 32 and 64 channels, a 128-unit hidden layer and a linear head; SGD with
  Nesterov momentum 0.9, lr 0.1, weight decay 5e-4 (on every parameter), batch 128, no warm-up, the learning rate
  decayed linearly to zero by elapsed time (issue 11's loop);
- tabular classification and regression: an MLP of two 256-unit ReLU layers; AdamW, lr 1e-3, weight decay 0.01
  (PyTorch's defaults), batch 128 (32 for sets under 1,000 samples), the same linear decay by time; cross-entropy,
  or MSE on standardised targets.

Both read the same arrays and standardise inputs the same way (per channel for images, per feature for tables).
Data sets (``benchmarks/hard_data.py``, written once to a temporary folder): scikit-learn's digits (timebudget's
registered ``digits``), ``digits16`` (USPS-sized distorted digits), ``digits28``, ``cifar-digits`` (32x32 RGB, digits
on clutter), ``classification`` (``make_classification``, 20 classes, flipped labels), ``regression``
(``make_regression``, correlated features) and ``diabetes``.

Fairness: each run is its own process, forked from this one after it has imported torch, timebudget and
scikit-learn once and constructed one optimizer (which imports ``torch._dynamo``): interpreter start-up and imports,
which took 3 to 15 s per process on the shared machine, are excluded from both sides, and a run cannot leave state
behind for the next. Both budgets count from the start of the run: timebudget through its library call
``train(Config(seconds=B, data=D))`` (the README's form, whose budget counts from the call; every other field at its
default, as with ``timebudget train --seconds B --data D``), the plain loop from its first line. Loading the data,
building the model and (for timebudget) calibrating are inside both budgets. One thread each
(``OMP_NUM_THREADS=1``). The plain loop trains until the budget is over and only then evaluates (its final evaluation
is not counted), while timebudget fits its evaluation, checkpoint and summary inside the budget: this favours the
plain loop. Within each (set, budget, seed) cell the two run back to back
in alternating order, and the cells run in a shuffled order, so drifts of the machine's load hit both alike.

A run is *at chance* when it ended no better than a constant predictor: test accuracy within 1.5x of chance
(1/classes), or a test MAE at least the MAE of predicting the training mean. A timebudget run *diverged* when a logged
loss was not finite, or when it ended at chance while the plain loop of the same cell and seed did not (a run that
had too few seconds to learn anything is no divergence: on the hardest set at the smallest budgets neither side
learns).

Goal (issue 11): in every cell, timebudget's mean accuracy >= the plain loop's - 0.5 point (regression: mean MAE at
most 2% above the plain loop's), and no timebudget run diverged.

Full table: ``python benchmarks/defaults.py`` (about 35 minutes on one core of a 2-core CPU); smoke run: ``--quick``.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, here and in every forked run

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# set -> budgets in seconds (start-up included), chosen for about 1 to 30 passes over the training set on one core of
# the quiet 2-core CPU (passes measured in session 5's table). The smallest sets cannot go below a few passes: a run's
# floor is about a second (start-up, calibration, the tail), and digits trains about 12 passes and diabetes about 60 in
# that second. The two 32x32 sets cannot reach 30 passes in minutes: their largest budget gives about 6 to 9.
BUDGETS: dict[str, list[float]] = {
    "digits": [1.0, 2.0, 4.0],
    "digits16": [4.0, 16.0, 48.0],
    "digits28": [8.0, 24.0, 64.0],
    "cifar-digits": [12.0, 24.0, 64.0],  # under about 10 s refused here: final evaluation and checkpoint take 3.5 s
    "classification": [1.0, 2.0, 6.0],
    "regression": [1.0, 2.0, 5.0],
    "diabetes": [1.0, 2.0, 4.0],
}
QUICK: dict[str, list[float]] = {"digits16": [8.0], "classification": [2.0], "diabetes": [2.0]}
SEEDS = [0, 1, 2]
TOLERANCE_PT, TOLERANCE_MAE = 0.5, 0.02


# --- the plain loop (runs in its own process) ----------------------------------------------------------------------
def plain_arrays(path: str) -> tuple[np.ndarray, ...]:
    """The set's arrays: ``digits`` as timebudget splits it, anything else from its ``.npz``."""
    if path == "digits":
        from timebudget.data import digits_arrays

        return digits_arrays()
    d = np.load(path)
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def plain_main(path: str, seconds: float, seed: int) -> dict[str, Any]:
    """A careful hand-written loop: train for ``seconds`` from its first line, then evaluate."""
    import torch.nn.functional as F
    from torch import nn

    deadline = time.monotonic() + seconds
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = plain_arrays(path)
    to_t = torch.as_tensor
    if x_train.ndim == 4 and x_train.shape[-1] in (1, 3):  # NHWC uint8
        x_train, x_test = x_train.transpose(0, 3, 1, 2), x_test.transpose(0, 3, 1, 2)
    if x_train.ndim == 3:
        x_train, x_test = x_train[:, None], x_test[:, None]
    xtr, xte = to_t(np.ascontiguousarray(x_train)).float(), to_t(np.ascontiguousarray(x_test)).float()
    dims = (0, 2, 3) if xtr.ndim == 4 else (0,)
    mean, std = xtr.mean(dims, keepdim=True), xtr.std(dims, keepdim=True).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    regression = np.issubdtype(y_train.dtype, np.floating)
    if regression:
        ytr, yte = to_t(y_train).float().view(-1, 1), to_t(y_test).float().view(-1, 1)
        y_mean, y_std = ytr.mean(), ytr.std()
        ytr_n = (ytr - y_mean) / y_std
        outputs = 1
    else:
        ytr, yte = to_t(y_train).long(), to_t(y_test).long()
        ytr_n, outputs = ytr, int(max(ytr.max(), yte.max())) + 1
    n = len(xtr)
    if xtr.ndim == 4:
        c, h, w = xtr.shape[1:]
        block = lambda i, o: [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        model = nn.Sequential(*block(c, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128),
                              nn.ReLU(), nn.Linear(128, outputs))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        batch = 128
    else:
        model = nn.Sequential(nn.Linear(xtr.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                              nn.Linear(256, outputs))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        batch = 128 if n >= 1000 else 32
    base_lr = opt.param_groups[0]["lr"]
    loss_fn = F.mse_loss if regression else F.cross_entropy
    losses: list[float] = []
    steps = samples = 0
    t_start = time.monotonic()
    model.train()
    while time.monotonic() < deadline:
        for idx in torch.randperm(n).split(batch):
            now = time.monotonic()
            if now >= deadline:
                break
            for group in opt.param_groups:
                group["lr"] = base_lr * max(0.0, (deadline - now) / (deadline - t_start))
            loss = loss_fn(model(xtr[idx]), ytr_n[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps, samples = steps + 1, samples + len(idx)
            if steps % 50 == 0:
                losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(chunk) for chunk in xte.split(512)])
    if regression:
        metric = {"mae": float((out * y_std + y_mean - yte).abs().mean())}
    else:
        metric = {"accuracy": float((out.argmax(1) == yte).float().mean())}
    finite = all(math.isfinite(v) for v in losses) and bool(torch.isfinite(out).all())
    return {**metric, "passes": samples / n, "steps": steps, "finite": finite}


def timebudget_main(data: str, seconds: float, seed: int, out: str) -> dict[str, Any]:
    """``train(Config(seconds, data))`` with every other field at its default (``seed`` and ``out`` aside)."""
    from timebudget import Config, train

    try:
        summary = train(Config(seconds=seconds, data=data, seed=seed, out=out, quiet=True)).summary
    except Exception as exc:  # a refused budget is a result too: the table shows it
        return {"error": f"{type(exc).__name__}: {exc}"}
    losses = [json.loads(line).get("loss") for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    finite = all(math.isfinite(v) for v in losses if v is not None)
    choice = summary.get("lr_choice") or {}
    return {**summary["test_metrics"], "passes": summary["passes"], "steps": summary["steps"], "finite": finite,
            "elapsed_s": summary["elapsed_s"], "lr": choice.get("lr"), "lr_source": choice.get("source"),
            "warmup": summary.get("warmup"), "rollbacks": [r.get("why") for r in summary.get("rollbacks", [])]}


# --- the two sides, each run in a forked process ------------------------------------------------------------------
def preload() -> None:
    """What both sides would otherwise pay at start-up: the imports, and torch._dynamo, which the first optimizer
    constructed in a process imports (seconds on a loaded machine)."""
    import sklearn.model_selection  # noqa: F401  (digits' split)
    import timebudget.trainer  # noqa: F401

    torch.set_num_threads(1)
    torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)


def _child(side: str, data: str, seconds: float, seed: int, out: str, pipe: Any) -> None:
    try:
        pipe.send(plain_main(data, seconds, seed) if side == "plain" else timebudget_main(data, seconds, seed, out))
    except Exception as exc:
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})


def run_side(side: str, data: str, seconds: float, seed: int, out: Path) -> dict[str, Any]:
    """One run of ``side`` (plain or timebudget) in a process forked from this one; its result as a dict."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    t0 = time.monotonic()
    proc = ctx.Process(target=_child, args=(side, data, seconds, seed, str(out), send))
    proc.start()
    result = receive.recv() if receive.poll(seconds + 600) else {"error": "no result within budget + 600 s"}
    proc.join()
    return {**result, "wall_s": time.monotonic() - t0}


# --- data ---------------------------------------------------------------------------------------------------------
def prepare(names: list[str], folder: Path) -> dict[str, dict[str, Any]]:
    """Write each set once; return per set its ``--data`` argument, task and constant-predictor baseline."""
    from benchmarks.hard_data import write_npz

    sets = {}
    for name in names:
        data = "digits" if name == "digits" else str(write_npz(name, folder / f"{name}.npz", seed=0))
        _, y_train, _, y_test = plain_arrays(data)
        if np.issubdtype(y_train.dtype, np.floating):
            sets[name] = {"data": data, "task": "regression",
                          "constant_mae": float(np.abs(y_test - y_train.mean()).mean())}
        else:
            sets[name] = {"data": data, "task": "classification", "classes": int(max(y_train.max(), y_test.max())) + 1}
    return sets


def at_chance(result: dict[str, Any], info: dict[str, Any]) -> bool:
    """No better than a constant predictor (see the module docstring); a failed run counts as one."""
    if "error" in result:
        return True
    if info["task"] == "regression":
        return not result["mae"] < info["constant_mae"]
    return result["accuracy"] <= 1.5 / info["classes"]


def diverged(result: dict[str, Any], other: dict[str, Any], info: dict[str, Any]) -> bool:
    """A non-finite loss, or at chance where the other side, same cell and seed, learned. A run that was refused
    (its budget below the measured minimum) is counted apart, as refused."""
    if "error" in result:
        return False
    return not result["finite"] or (at_chance(result, info) and not at_chance(other, info))


# --- the table ----------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def table(rows: list[dict[str, Any]], sets: dict[str, dict[str, Any]]) -> bool:
    """Print one line per (set, budget); return whether every cell meets the goal."""
    print("\n| set | budget s | metric | plain loop | timebudget | paired diff | tb passes | tb lr (source) | "
          "at chance tb/plain | diverged tb/plain | refused | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    all_met = True
    for name, info in sets.items():
        for budget in sorted({r["budget"] for r in rows if r["set"] == name}):
            cell = [r for r in rows if r["set"] == name and r["budget"] == budget]
            key = "mae" if info["task"] == "regression" else "accuracy"
            scale = 1.0 if key == "mae" else 100.0
            tb = [r["tb"][key] * scale for r in cell if key in r["tb"]]
            pl = [r["plain"][key] * scale for r in cell if key in r["plain"]]
            diffs = [(r["tb"][key] - r["plain"][key]) * scale for r in cell if key in r["tb"] and key in r["plain"]]
            div_tb = sum(diverged(r["tb"], r["plain"], info) for r in cell)
            div_pl = sum(diverged(r["plain"], r["tb"], info) for r in cell)
            chance = f"{sum(at_chance(r['tb'], info) for r in cell)}/{sum(at_chance(r['plain'], info) for r in cell)}"
            refused = sum("error" in r["tb"] for r in cell)
            met = bool(tb) and not refused and div_tb == 0
            if met and key == "mae":
                met = statistics.mean(tb) <= (1 + TOLERANCE_MAE) * statistics.mean(pl)
            elif met:
                met = statistics.mean(tb) >= statistics.mean(pl) - TOLERANCE_PT
            all_met &= met
            passes = mean_std([r["tb"]["passes"] for r in cell if "passes" in r["tb"]])
            lrs = sorted({f"{r['tb']['lr']:.3g} ({r['tb']['lr_source']})" for r in cell if r["tb"].get("lr")})
            errors = [r["tb"]["error"].split(": ")[0] + ": " + r["tb"]["error"].split("; ")[0].split(": ", 1)[1]
                      for r in cell if "error" in r["tb"]]
            print(f"| {name} | {budget:g} | {'MAE' if key == 'mae' else 'acc %'} | {mean_std(pl)} | {mean_std(tb)} | "
                  f"{mean_std(diffs)} | {passes} | {', '.join(lrs)} | {chance} | {div_tb}/{div_pl} | {refused} | "
                  f"{'met' if met else 'NOT MET'}{' (' + errors[0] + ')' if errors else ''} |")
    return all_met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: three sets, one budget, one seed")
    parser.add_argument("--sets", nargs="+", choices=list(BUDGETS), help="a subset of the sets")
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--results", type=Path, help="also append every run's result to this JSON-lines file")
    parser.add_argument("--table", type=Path, metavar="RESULTS",
                        help="only print the table of a --results file (the sets are regenerated for their baselines)")
    args = parser.parse_args(argv)
    if args.table:
        rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        with tempfile.TemporaryDirectory(prefix="tb-defaults-") as tmp:
            sets = prepare([n for n in BUDGETS if any(r["set"] == n for r in rows)], Path(tmp))
        met = table(rows, sets)
        print(f"\n{len(rows)} cells; goal {'met in every cell' if met else 'NOT met in every cell'}")
        return 0 if met else 1
    budgets = QUICK if args.quick else BUDGETS
    seeds = [0] if args.quick else args.seeds
    names = [n for n in budgets if not args.sets or n in args.sets]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"OMP_NUM_THREADS=1 per run; started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    preload()
    with tempfile.TemporaryDirectory(prefix="tb-defaults-") as tmp:
        folder = Path(tmp)
        sets = prepare(names, folder)
        cells = [(name, budget, seed) for name in names for budget in budgets[name] for seed in seeds]
        random.Random(0).shuffle(cells)
        rows = []
        for k, (name, budget, seed) in enumerate(cells):
            data = sets[name]["data"]
            sides = ["plain", "tb"] if k % 2 == 0 else ["tb", "plain"]
            row: dict[str, Any] = {"set": name, "budget": budget, "seed": seed}
            for side in sides:
                row[side] = run_side("plain" if side == "plain" else "timebudget", data, budget, seed,
                                     folder / f"run{k}")
            rows.append(row)
            if args.results:
                with args.results.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            key = "mae" if sets[name]["task"] == "regression" else "accuracy"
            print(f"[{k + 1}/{len(cells)}] {name} {budget:g}s seed {seed}: plain {row['plain'].get(key, row['plain'])} "
                  f"tb {row['tb'].get(key, row['tb'])}", flush=True)
    met = table(rows, sets)
    print(f"\ngoal (>= plain - {TOLERANCE_PT} pt accuracy, MAE <= plain + {TOLERANCE_MAE:.0%}, no diverged timebudget "
          f"run) {'met in every cell' if met else 'NOT met in every cell'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
