"""Run-folder writes: atomic (a reader sees the old file or the new one, never half of one), and readable."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from timebudget import artifacts


def test_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    artifacts.write_json(path, {"steps": 1})
    artifacts.write_json(path, {"steps": 2, "test_metrics": {"accuracy": 0.5}})
    assert json.loads(path.read_text()) == {"steps": 2, "test_metrics": {"accuracy": 0.5}}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the process is stopped or the disk fails mid-write, the previous artifact must survive unchanged."""
    path = tmp_path / "config.yaml"
    artifacts.write_text(path, "seconds: 10\n")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        artifacts.write_text(path, "seconds: 20\n")
    assert path.read_text() == "seconds: 10\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    """Checkpoints hold tensors, numbers, strings and plain containers only, so ``weights_only=True`` can read them."""
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "steps": 7, "rng": {"torch": torch.get_rng_state()}, "config": {"lr": 0.1}}
    artifacts.save_torch(tmp_path / "checkpoint.pt", state)
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert loaded["steps"] == 7 and loaded["config"] == {"lr": 0.1}
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])


def test_metrics_log_appends_whole_lines_in_batches(tmp_path: Path) -> None:
    """Records reach the file a batch at a time (no file I/O per step) and every line is one JSON record."""
    path = tmp_path / "metrics.jsonl"
    log = artifacts.MetricsLog(path, buffer_lines=3)
    assert path.read_text() == ""
    log.write({"step": 1})
    log.write({"step": 2})
    assert path.read_text() == ""
    log.write({"step": 3})
    log.write({"step": 4})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 1}, {"step": 2}, {"step": 3}]
    log.flush()
    log.flush()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_artifacts_get_the_mode_of_a_plain_file(tmp_path: Path) -> None:
    """The temporary file must not leave run outputs readable by their owner only (teammates, CI uploads)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    artifacts.write_text(tmp_path / "config.yaml", "x")
    artifacts.save_torch(tmp_path / "checkpoint.pt", {"steps": 1})
    expected = plain.stat().st_mode
    assert [(tmp_path / name).stat().st_mode for name in ("config.yaml", "checkpoint.pt")] == [expected, expected]


def test_metrics_log_hands_its_batches_to_the_sinks(tmp_path: Path) -> None:
    """A sink (TensorBoard) gets the records when the log writes its file, never per record, and is closed with it."""
    batches: list[list[dict[str, int]]] = []
    closed: list[bool] = []

    class Sink:
        def write(self, records: list[dict[str, int]]) -> None:
            batches.append(list(records))

        def close(self) -> None:
            closed.append(True)

    log = artifacts.MetricsLog(tmp_path / "metrics.jsonl", buffer_lines=2, sinks=[Sink()])
    log.write({"step": 1})
    assert batches == []
    log.write({"step": 2})
    log.write({"step": 3})
    assert batches == [[{"step": 1}, {"step": 2}]]
    log.close()
    assert batches == [[{"step": 1}, {"step": 2}], [{"step": 3}]] and closed == [True]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_write_stopped_half_way_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half of the new bytes reach the disk, then the write stops (a signal's exception, a full disk): the artifact
    is still the old one, whole, and no temporary file is left."""
    path = tmp_path / "checkpoint.pt"
    artifacts.save_torch(path, {"steps": 1, "w": torch.zeros(1000)})
    real_fdopen = os.fdopen

    class HalfWay:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> HalfWay:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> None:
            self.fh.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWay(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        artifacts.save_torch(path, {"steps": 2, "w": torch.ones(1000)})
    assert torch.load(path, weights_only=True)["steps"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_metrics_log_continued_after_a_kill_drops_the_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "step", "step": 1}\n{"event": "st')  # a process killed mid-append
    log = artifacts.MetricsLog(path, append=True)
    log.write({"event": "resume", "step": 1})
    log.flush()
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["step", "resume"]
