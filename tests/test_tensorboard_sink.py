"""``--tensorboard``: a real run's event file read back with TensorBoard's own reader, the sink's tags and steps, and
the one-line refusal when the package is missing."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from timebudget import data
from timebudget.config import Config
from timebudget.errors import TimebudgetError
from timebudget.trainer import train

from conftest import CliResult

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from timebudget.tensorboard_sink import TensorBoardSink  # noqa: E402


def test_event_file_holds_the_runs_series_stamped_with_wall_time(tmp_path: Path) -> None:
    data.load("synthetic")  # first-time imports before the budget starts
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    before = time.time()
    result = train(Config(seconds=5.0, data="synthetic", model="mlp", log_every=5, eval_every=1.0, tensorboard=True,
                          out=str(tmp_path / "run"), quiet=True))
    after = time.time()
    torch.set_num_threads(threads)
    run = result.out_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/lr", "train/loss", "train/samples", "epoch/kept_fraction", "test/accuracy", "final/accuracy"} <= tags
    lr, loss = events.Scalars("train/lr"), events.Scalars("train/loss")
    assert [e.step for e in lr] == [r["step"] for r in steps]
    assert [e.value for e in lr] == pytest.approx([r["lr"] for r in steps], rel=1e-6)
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    walls = [e.wall_time for e in loss]
    assert before <= walls[0] and walls == sorted(walls) and walls[-1] <= after
    assert [b - a for a, b in zip(walls, walls[1:])] == pytest.approx(
        [b["time"] - a["time"] for a, b in zip(steps, steps[1:])], abs=1e-3)
    (final,) = events.Scalars("final/accuracy")
    assert final.value == pytest.approx(result.summary["test_metrics"]["accuracy"]) and final.step == steps[-1]["step"]
    assert result.summary["elapsed_s"] <= 5.0


def test_sink_tags_steps_and_skips(tmp_path: Path) -> None:
    """Each number is a scalar ``<section>/<key>`` at the record's step (an epoch record: the last step's); flags,
    nested values and the bookkeeping keys are not."""
    sink = TensorBoardSink(tmp_path, elapsed_now=0.0)
    sink.write([{"event": "step", "step": 10, "time": 1.0, "lr": 0.1, "loss": 2.0},
                {"event": "epoch", "epoch": 1, "time": 1.5, "kept_fraction": 0.5, "phase": "select"},
                {"event": "load", "step": 12, "time": 2.0, "step_slowdown": 3.0, "retimed": True},
                {"event": "training", "time": 0.5, "phase_starts": {"training": 0.5}, "budget_s": 60}])
    sink.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/lr", "train/loss", "epoch/epoch", "epoch/kept_fraction",
                                             "load/step_slowdown", "training/budget_s"}
    assert [(e.step, e.value) for e in events.Scalars("epoch/kept_fraction")] == [(10, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("load/step_slowdown")] == [(12, 3.0)]


def test_missing_package_is_one_line_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 cli_main: Callable[..., CliResult]) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it now fails
    out = tmp_path / "run"
    with pytest.raises(TimebudgetError, match=r"--tensorboard needs the tensorboard package.*\[tensorboard\]"):
        train(Config(seconds=30, tensorboard=True, out=str(out), quiet=True))
    cli_main("train", "--seconds", "30", "--tensorboard", "--out", str(out)).one_line_error("pip install")
    assert not out.exists()
