"""``timebudget report``: the figure of a finished run (its panels' titles and data, not pixels), two runs compared,
an unfinished run, bad input, and ``train --report``."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from timebudget import cli, data, report
from timebudget.config import Config
from timebudget.trainer import TrainResult, train

from conftest import CliResult

BUDGET = 5.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two short runs: every sample (seed 0) and a random half per epoch (seed 1), with periodic evaluations."""
    root = tmp_path_factory.mktemp("report_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    made = {}
    data.load("synthetic")  # before the budgets start (torch._dynamo, which the first optimizer imports: conftest)
    for name, fields in (("full", {"seed": 0, "strategy": "full"}),
                         ("random", {"seed": 1, "strategy": "random", "keep_fraction": 0.5})):
        config = Config(seconds=BUDGET, data="synthetic", model="mlp", log_every=5, eval_every=1.0,
                        out=str(root / name), quiet=True, **fields)
        made[name] = train(config).out_dir
    torch.set_num_threads(threads)
    return made


def _records(run: Path, event: str) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _lines(ax: Any) -> list[tuple[list[float], list[float]]]:
    return [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]


def test_finished_run_has_the_named_panels_with_its_data(runs: dict[str, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = runs["full"]
    path = report.write([run])
    assert path == run / "report.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.splitlines() == [f"timebudget report: {path}"]
    summary = json.loads((run / "summary.json").read_text())
    fig = report.figure([report.load(run)])
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == list(report.PANELS)
    steps, epochs, evals = (_records(run, e) for e in ("step", "epoch", "eval"))
    assert len(steps) >= 3 and len(evals) >= 1
    lr_ax, loss_ax, kept_ax, step_ax, test_ax = axes
    assert ([r["time"] for r in steps], [r["lr"] for r in steps]) in _lines(lr_ax)
    assert ([r["time"] for r in steps], [r["loss"] for r in steps]) in _lines(loss_ax)
    kept_x, kept_y = _lines(kept_ax)[0]
    assert kept_x[:-1] == [r["time"] for r in epochs] and kept_y == [1.0] * (len(epochs) + 1)
    assert kept_x[-1] == pytest.approx(summary["phase_starts"]["tail"])  # held until training ended
    step_times = _lines(step_ax)[0][1]
    assert len(step_times) == len(steps) - 1 and all(t > 0 for t in step_times)
    assert ([r["time"] for r in evals], [r["accuracy"] for r in evals]) in _lines(test_ax)
    assert ([summary["elapsed_s"]], [summary["test_metrics"]["accuracy"]]) in _lines(test_ax)  # the final star
    # the phases shaded in every panel, from 0 to the end of the run, and the deadline marked
    for ax in axes:
        spans = sorted(p.get_x() + d for p in ax.patches for d in (0.0, p.get_width()))
        starts = summary["phase_starts"]
        bounds = [0.0, starts["calibration"], starts["training"], starts["tail"], summary["elapsed_s"]]
        assert spans == pytest.approx(sorted(bounds + bounds[1:-1]))
        assert ([BUDGET, BUDGET], [0.0, 1.0]) in _lines(ax)
    assert "full seed" not in fig.get_suptitle() and "accuracy" in fig.get_suptitle()


def test_two_runs_compared_in_one_figure(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.png"
    assert cli.main(["report", str(runs["full"]), str(runs["random"]), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    loaded = [report.load(runs["full"]), report.load(runs["random"])]
    report.label_runs(loaded)
    fig = report.figure(loaded)
    lr_ax, _, kept_ax, _, test_ax = fig.axes
    labels = [line.get_label() for line in lr_ax.get_lines()]
    assert [label for label in labels if "seed" in label] == ["full seed 0", "random seed 1"]
    kept = {line.get_label(): list(line.get_ydata()) for line in kept_ax.get_lines()}
    assert set(kept["full seed 0"]) == {1.0} and max(kept["random seed 1"]) <= 0.55
    finals = [line.get_label() for line in test_ax.get_lines() if "final" in line.get_label()]
    assert [label.split(":")[0] for label in finals] == ["full seed 0", "random seed 1"]
    assert "2 runs compared" in fig.get_suptitle()


def test_unfinished_run_is_drawn_from_what_is_there(runs: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A run killed mid-training: no summary.json, a last line cut short. Drawn, saying what is missing."""
    run = tmp_path / "killed"
    shutil.copytree(runs["full"], run)
    (run / "summary.json").unlink()
    (run / "report.png").unlink(missing_ok=True)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"event": "step", "st')
    assert cli.main(["report", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"timebudget report: {run / 'report.png'}" and (run / "report.png").is_file()
    assert any("no summary.json" in line and "did not finish" in line for line in out)
    assert any("1 lines of metrics.jsonl unreadable" in line for line in out)
    loaded = report.load(run)
    fig = report.figure([loaded])
    assert "did not finish" in fig.get_suptitle()
    assert set(loaded.phases()) == {"start-up", "calibration", "training"}  # from the training record
    assert len(_lines(fig.axes[0])[0][0]) == len(_records(runs["full"], "step"))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        pytest.param(lambda p: p / "nowhere", "is not a folder", id="missing"),
        pytest.param(lambda p: p, "is not a run folder", id="empty-folder"),
        pytest.param(lambda p: (p / "config.yaml").write_text("seconds: 5\n") and p, "has no metrics.jsonl",
                     id="no-metrics"),
    ],
)
def test_not_a_run_is_one_line(tmp_path: Path, cli_main: Callable[..., CliResult], make: Callable[[Path], Path],
                               needle: str) -> None:
    result = cli_main("report", str(make(tmp_path)))
    result.one_line_error(needle)
    assert result.code == cli.EXIT_BAD_INPUT and not (tmp_path / "report.png").exists()


def test_out_must_be_a_png(runs: dict[str, Path], tmp_path: Path, cli_main: Callable[..., CliResult]) -> None:
    cli_main("report", str(runs["full"]), "--out", str(tmp_path / "r.pdf")).one_line_error("PNG")


def test_train_report_draws_after_training(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``train --report`` hands the finished run folder to the report; training itself is replaced by a fixture's."""
    import timebudget.trainer

    run = tmp_path / "run"
    shutil.copytree(runs["random"], run, ignore=shutil.ignore_patterns("report.png"))
    seen: list[Config] = []

    def finished(config: Config, start: float | None = None) -> TrainResult:
        seen.append(config)
        summary = json.loads((run / "summary.json").read_text())
        return TrainResult(out_dir=run, summary=summary, model=nn.Identity(), config=config)

    monkeypatch.setattr(timebudget.trainer, "train", finished)
    assert cli.main(["train", "--seconds", "60", "--report"]) == 0
    assert seen[0].report and (run / "report.png").is_file()
    assert capsys.readouterr().out.splitlines()[-1] == f"timebudget report: {run / 'report.png'}"


def test_load_changes_sit_at_the_step_time_they_imply(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "loaded"
    shutil.copytree(runs["full"], run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "load", "step": 9, "time": 3.0, "step_slowdown": 2.5, "tail_scale": 1.5,
                             "retimed": True, "reserve_s": 0.4}) + "\n")
    step_ax = report.figure([report.load(run)]).axes[3]
    calibrated = json.loads((run / "summary.json").read_text())["calibration"]["step_s"][-1]
    (marks,) = [line for line in step_ax.get_lines() if line.get_label().startswith("load change")]
    loads = _records(run, "load")  # the run's own (the machine's load changed) and the one added
    assert list(marks.get_xdata()) == [r["time"] for r in loads]
    assert list(marks.get_ydata()) == pytest.approx([r["step_slowdown"] * calibrated for r in loads])
    assert (marks.get_xdata()[-1], marks.get_ydata()[-1]) == (3.0, pytest.approx(2.5 * calibrated))
