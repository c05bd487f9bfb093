"""``timebudget report RUN_DIR [RUN_DIR ...]``: one figure of how a run spent its budget, or of several runs compared.

Against wall-clock seconds since the run started: the learning rate, the training loss, the kept fraction per epoch,
the step time with the load events, and the periodic and final test metrics; in every panel the budget's phases
(start-up, calibration, training window, tail) shaded and the deadline marked. Several runs share the axes, each
curve labelled by strategy and seed. It reads only the run folder (``metrics.jsonl``, ``summary.json``,
``config.yaml``), runs after training, outside any budget, and draws with matplotlib's Agg canvas (no display).

A run that did not finish (interrupted, failed) has no ``summary.json``: what ``metrics.jsonl`` holds is drawn, and
the report says what is missing. A folder that is not a run, or a run without ``metrics.jsonl``, is an error.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import artifacts
from .errors import TimebudgetError

PANELS = ("learning rate", "training loss", "kept fraction per epoch", "step time (s) and load events",
          "test metrics")
PHASE_COLOURS = {"start-up": "0.6", "calibration": "tab:orange", "training": "tab:green", "tail": "tab:red"}


@dataclass
class RunRecords:
    """What a run folder holds, read once."""

    path: Path
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what is missing or could not be read
    label: str = ""

    def of(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]

    @property
    def budget_s(self) -> float | None:
        budget = (self.summary or {}).get("budget_s", self.config.get("seconds"))
        return float(budget) if budget is not None else None

    def phases(self) -> dict[str, tuple[float, float]]:
        """Each phase's (start, end) in seconds since the run started, as far as the folder tells."""
        summary = self.summary or {}
        training = self.of("training")
        starts = dict(summary.get("phase_starts") or (training[0]["phase_starts"] if training else {}))
        if not starts and "startup_s" in summary:  # a run made before phase_starts was recorded
            starts = {"start-up": 0.0, "training": summary["startup_s"]}
        if not starts:
            return {}
        ends = {"tail": summary.get("elapsed_s")}
        if "tail" not in starts:  # not finished: training lasted at least until the last record
            ends["training"] = max((r.get("time", 0.0) for r in self.records), default=None)
        names = [n for n in PHASE_COLOURS if n in starts]
        for name, following in zip(names, names[1:]):
            ends[name] = starts[following]
        return {n: (starts[n], ends[n]) for n in names if ends.get(n) is not None}


def load(run_dir: str | Path) -> RunRecords:
    """Read a run folder; raise :class:`TimebudgetError` (one line) when it is not one or has no metrics.jsonl."""
    path = Path(run_dir)
    if not path.is_dir():
        raise TimebudgetError(f"{str(run_dir)!r} is not a folder; expected a run folder made by timebudget train")
    metrics, summary_path, config_path = path / "metrics.jsonl", path / "summary.json", path / "config.yaml"
    if not metrics.is_file():
        if config_path.is_file() or summary_path.is_file():
            raise TimebudgetError(f"{str(run_dir)!r} has no metrics.jsonl (the run stopped before training): "
                                  "nothing to plot")
        raise TimebudgetError(f"{str(run_dir)!r} is not a run folder (no metrics.jsonl, summary.json or config.yaml)")
    records, unreadable = [], 0
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("time"), (int, float)):
            records.append(record)
        else:
            unreadable += 1
    notes = [f"{unreadable} lines of metrics.jsonl unreadable or without a time, skipped"] if unreadable else []
    summary = _read(summary_path, json.loads, notes)
    if not summary_path.is_file():
        notes.append("no summary.json: the run did not finish (interrupted or failed); no final evaluation, no tail")
    config = _read(config_path, yaml.safe_load, notes)
    if not config_path.is_file():
        notes.append("no config.yaml: strategy and seed unknown")
    if not any(r.get("event") == "step" for r in records):
        notes.append("no step records in metrics.jsonl: no training step was logged")
    return RunRecords(path, records, summary if isinstance(summary, dict) else None,
                      config if isinstance(config, dict) else {}, notes)


def _read(path: Path, parse: Any, notes: list[str]) -> Any:
    """The parsed file, or ``None`` when it is absent or unreadable (then noted)."""
    if not path.is_file():
        return None
    try:
        return parse(path.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        notes.append(f"{path.name} unreadable ({type(exc).__name__}), left out")
        return None


def label_runs(runs: list[RunRecords]) -> None:
    """``strategy seed N`` for each run; the folder name is added where that does not tell runs apart."""
    for run in runs:
        strategy = (run.summary or {}).get("strategy", run.config.get("strategy", "?"))
        run.label = f"{strategy} seed {run.config.get('seed', '?')}"
    for run in runs:
        if sum(r.label == run.label for r in runs) > 1:
            run.label = f"{run.label} ({run.path.name})"


def figure(runs: list[RunRecords]) -> Any:
    """The report's figure (a matplotlib ``Figure`` on the Agg canvas): one panel per entry of :data:`PANELS`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 13), layout="constrained")
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, title in zip(axes, PANELS):
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
    single = len(runs) == 1
    for i, run in enumerate(runs):
        colour = f"C{i}"
        _draw_run(axes, run, colour, single)
        for ax in axes:
            _shade_phases(ax, run, alpha=0.12 / len(runs), colour=colour, label=i == 0 and ax is axes[0])
    axes[-1].set_xlabel("seconds since the run started (wall clock)")
    axes[-1].set_xlim(left=0)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(_title(runs), fontsize=11)
    return fig


def _draw_run(axes: Any, run: RunRecords, colour: str, single: bool) -> None:
    lr_ax, loss_ax, kept_ax, step_ax, test_ax = axes
    steps = sorted(run.of("step"), key=lambda r: r["time"])
    label = None if single else run.label
    line = {"color": colour, "marker": "o" if len(steps) <= 40 else None, "markersize": 3}  # few records: dots
    times = [r["time"] for r in steps]
    lr_ax.plot(times, [r["lr"] for r in steps], label=label, **line)
    losses = [r["loss"] for r in steps]
    loss_ax.plot(times, losses, label=label, **line)
    shown = [v for v in losses if math.isfinite(v)]
    if shown and min(shown) > 0 and max(shown) / min(shown) > 100:
        loss_ax.set_yscale("log")
    epochs = sorted(run.of("epoch"), key=lambda r: r["time"])
    if epochs:  # each epoch's share holds until the next epoch starts, the last one until training ended
        end = run.phases().get("training", (0.0, epochs[-1]["time"]))[1]
        kept_ax.step([r["time"] for r in epochs] + [max(end, epochs[-1]["time"])],
                     [r["kept_fraction"] for r in epochs] + [epochs[-1]["kept_fraction"]], where="post",
                     color=colour, label=label)
    kept_ax.set_ylim(0, 1.05)
    pairs = [(a, b) for a, b in zip(steps, steps[1:]) if b["step"] > a["step"]]
    step_ax.plot([b["time"] for _, b in pairs], [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in pairs],
                 label=_prefix(label) + "mean between step records", **line)
    calibrated = ((run.summary or {}).get("calibration") or {}).get("step_s")
    if calibrated:
        step_ax.axhline(calibrated[-1], color=colour, linestyle=":", linewidth=1,
                        label=_prefix(label) + "calibration step")
    loads = [r for r in run.of("load") if isinstance(r.get("step_slowdown"), (int, float))]
    for load in loads:
        step_ax.axvline(load["time"], color=colour, linestyle=":", linewidth=0.8, alpha=0.5)
    if loads and calibrated:  # each load change at the step time it implies: calibration step x the slowdown
        step_ax.plot([r["time"] for r in loads], [calibrated[-1] * r["step_slowdown"] for r in loads], "v",
                     color=colour, markersize=6, label=_prefix(label) + "load change (calibration step x slowdown)")
    _draw_tests(test_ax, run, colour, label)


def _draw_tests(ax: Any, run: RunRecords, colour: str, label: str | None) -> None:
    """Periodic evaluations as lines with dots; the final evaluation (at the end of the run) as a star."""
    evals = sorted(run.of("eval"), key=lambda r: r["time"])
    final = (run.summary or {}).get("test_metrics") or {}
    names = list(final) or [k for k in (evals[0] if evals else {}) if k not in ("event", "step", "time", "eval_s")]
    end = (run.summary or {}).get("elapsed_s")
    for j, name in enumerate(names):
        style = ("-", "--", ":")[j % 3]
        prefix = _prefix(label)
        points = [(r["time"], r[name]) for r in evals if name in r]
        if points:
            ax.plot(*zip(*points), style, marker="o", markersize=3, color=colour, label=f"{prefix}{name} (periodic)")
        if name in final and end is not None:
            ax.plot([end], [final[name]], marker="*", markersize=12, linestyle="none", color=colour,
                    label=f"{prefix}{name} final {final[name]:.4g}")


def _prefix(label: str | None) -> str:
    return f"{label}: " if label else ""


def _shade_phases(ax: Any, run: RunRecords, alpha: float, colour: str, label: bool) -> None:
    for name, (start, end) in run.phases().items():
        ax.axvspan(start, end, color=PHASE_COLOURS[name], alpha=alpha if name != "training" else alpha / 2,
                   linewidth=0, label=name if label else None)
    if run.budget_s is not None:
        ax.axvline(run.budget_s, color="black" if colour == "C0" else colour, linestyle="--", linewidth=1.2,
                   label="deadline" if label else None)


def _title(runs: list[RunRecords]) -> str:
    if len(runs) > 1:
        return f"{len(runs)} runs compared: " + ", ".join(f"{r.label} ({r.path.name})" for r in runs)
    run = runs[0]
    s, c = run.summary or {}, run.config
    what = ", ".join(str(v) for v in (s.get("data", c.get("data")), s.get("model", c.get("model")),
                                      s.get("strategy", c.get("strategy")), s.get("device")) if v)
    budget = f"budget {run.budget_s:g} s" if run.budget_s is not None else "budget unknown"
    done = (f"ended at {s['elapsed_s']:.2f} s" if "elapsed_s" in s else "did not finish")
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in (s.get("test_metrics") or {}).items())
    title = f"{run.path.name}: {what}; {budget}, {done}" + (f"; test {metrics}" if metrics else "")
    return title + "".join(f"\n{note}" for note in run.notes)


def write(run_dirs: list[str | Path], out: str | Path | None = None, quiet: bool = False) -> Path:
    """Draw the report of ``run_dirs`` into ``out`` (default ``RUN_DIR/report.png``, or ``report.png`` in the
    current folder for several runs); print what is missing and the path, unless ``quiet``. Returns the path."""
    if not run_dirs:
        raise TimebudgetError("report needs at least one RUN_DIR")
    runs = [load(d) for d in run_dirs]
    label_runs(runs)
    path = Path(out) if out else (runs[0].path / "report.png" if len(runs) == 1 else Path("report.png"))
    if path.suffix.lower() != ".png":
        raise TimebudgetError(f"--out {str(path)!r}: the report is a PNG image; give a path ending in .png")
    if not path.parent.is_dir():
        raise TimebudgetError(f"--out {str(path)!r}: folder {str(path.parent)!r} does not exist")
    fig = figure(runs)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    artifacts.write_bytes(path, buffer.getvalue())
    if not quiet:
        for run in runs:
            for note in run.notes:
                print(f"timebudget report: {run.path}: {note}")
        print(f"timebudget report: {path}")
    return path

