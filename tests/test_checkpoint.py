"""Resume restores every piece of state: a run interrupted and resumed trains the same batches at the same learning
rates, plans the same subsets and ends with the same model as one that was never interrupted (fake clock: time moves
only with training steps, so both runs see the same progress at every step). And what cannot be resumed is refused in
one line."""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from timebudget import checkpoint, trainer
from timebudget.config import Config
from timebudget.errors import TimebudgetError
from timebudget.trainer import train

from conftest import CliResult, FakeClock

STEP_S = 0.01
ORIGINAL_STEP = trainer._Run.step


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Recorder:
    """Wraps the trainer's step: the fake clock moves ``STEP_S`` per step (calibration's included; nothing else takes
    time), each training step's batch, targets, learning rate and weights are recorded, and SIGTERM can be sent to
    this process during a chosen step, as a scheduler would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, clock: FakeClock, interrupt_at: int | None = None) -> None:
        self.records: list[tuple[float, list[int], float, float | None]] = []
        self.lrs_at_stop: float | None = None
        original = ORIGINAL_STEP

        def step(run: Any, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
            clock.advance(STEP_S)
            if run.guard is None:  # calibration
                return original(run, x, y, weights)
            self.records.append((float(x.double().sum()), y.tolist(), run.schedule.lr,
                                 None if weights is None else float(weights.double().sum())))
            if interrupt_at is not None and run.steps + 1 == interrupt_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(run, x, y, weights)

        monkeypatch.setattr(trainer._Run, "step", step)


def _config(out: Path, **fields: Any) -> Config:
    values = dict(seconds=4.0, data="synthetic", model="mlp", strategy="selective", select_warmup=0.1,
                  keep_fraction=0.5, average_from=0.8, out=str(out), quiet=True, log_every=5)
    return Config(**{**values, **fields})


def copied_rows(path: Path) -> str:
    """An ``.npz`` of 256 items of 256 features, each copied 8 times with a little noise (2,048 training rows, as
    ``synthetic``), on which near-duplicate sampling acts: its epochs repeat rows."""
    g = np.random.default_rng(0)
    items = g.random((256, 256), dtype=np.float32)
    x = np.repeat(items, 8, axis=0) + 0.02 * g.standard_normal((2048, 256), dtype=np.float32)
    y = np.repeat(np.arange(256) % 4, 8)
    np.savez(path, x_train=x, y_train=y, x_test=items[:64], y_test=y[:512:8])
    return str(path)


@pytest.mark.parametrize("layout, data", [(checkpoint.FORMAT, "synthetic"), (1, "synthetic"),
                                          (checkpoint.FORMAT, "copies")])
def test_resumed_run_trains_as_the_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     layout: int, data: str) -> None:
    if data == "copies":
        data = copied_rows(tmp_path / "copies.npz")
    clock = FakeClock()
    whole = Recorder(monkeypatch, clock)
    uninterrupted = train(_config(tmp_path / "whole", data=data), now=clock)
    if data != "synthetic":
        assert uninterrupted.summary["strategy_stats"]["dedup"]["active"]
    assert uninterrupted.summary["status"] == "completed"

    k = 123  # mid-epoch (synthetic: 32 batches of 64 per full epoch), in the selection phase
    first = Recorder(monkeypatch, clock, interrupt_at=k)
    interrupted = train(_config(tmp_path / "parts", data=data), now=clock)
    summary = interrupted.summary
    assert (summary["status"], summary["signal"], summary["steps"]) == ("interrupted", "SIGTERM", k)
    assert first.records == whole.records[:k]
    if layout == 1:  # as an earlier version wrote it: every epoch's record (metrics.jsonl's) instead of their tally
        path = tmp_path / "parts" / checkpoint.NAME
        state = torch.load(path, weights_only=True)
        logged = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
        del state["subsets"]
        state.update(format=1, kept_log=[r for r in logged if r["event"] == "epoch"])
        torch.save(state, path)

    by_default, _ = checkpoint.resume_config(Config(resume=str(tmp_path / "parts")))
    assert by_default.seconds == pytest.approx(4.0 - summary["elapsed_s"])  # what the first part left of its budget
    assert (by_default.out, by_default.strategy, by_default.lr) == (str(tmp_path / "parts"), "selective",
                                                                   interrupted.config.lr)

    second = Recorder(monkeypatch, clock)
    # The rest of the first window plus the resumed run's own calibration (2 steps): the windows then line up.
    resumed = train(Config(resume=str(tmp_path / "parts"), seconds=4.0 - k * STEP_S, quiet=True), now=clock)
    summary = resumed.summary
    assert summary["status"] == "completed" and summary["steps"] == uninterrupted.summary["steps"]
    n = len(whole.records) - k
    assert [r[:2] for r in second.records] == [r[:2] for r in whole.records[k:]]  # the same batches, in order
    assert [r[2] for r in second.records] == pytest.approx([r[2] for r in whole.records[k:]], rel=1e-9, abs=1e-12)
    assert [r[3] for r in second.records] == pytest.approx([r[3] for r in whole.records[k:]])  # weights: the subset
    assert len(second.records) == n
    assert summary["subsets"] == uninterrupted.summary["subsets"]
    assert summary["test_metrics"] == uninterrupted.summary["test_metrics"]
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[name], value, atol=1e-6), name
    assert [p["status"] for p in summary["parts"]] == ["interrupted", "completed"]
    assert summary["parts"][0]["signal"] == "SIGTERM"
    assert summary["total"]["steps"] == sum(p["steps"] for p in summary["parts"]) == summary["steps"]
    assert summary["total"]["samples_trained"] == sum(p["samples"] for p in summary["parts"])
    records = [json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    (resume,) = [r for r in records if r["event"] == "resume"]
    assert resume["step"] == k and 0 < resume["progress"] < 1
    assert summary["final_lr"] == pytest.approx(uninterrupted.summary["final_lr"])
    assert summary["final_lr"] < 0.01 * resumed.config.lr


def test_strategy_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    """Every strategy with state (RS2's cycle, selective's staleness marks, the noisy filter's streaks) saves it as
    plain tensors and lists, and a fresh strategy loaded with it plans as the original does."""
    from timebudget import strategies
    from timebudget.scores import ScoreTable

    config = Config(seconds=10, strategy="random", keep_fraction=0.3, batch_size=8, filter_noisy=True, dedup="false")
    n = 200
    scores = ScoreTable(n)
    scores.record(torch.arange(n), torch.rand(n, generator=torch.Generator().manual_seed(0)) * 3, 1)
    for name in ("random", "selective"):
        config.strategy = name
        original = strategies.build(config, "classification")
        gen = torch.Generator().manual_seed(1)
        for epoch in range(3):
            original.plan(strategies.EpochContext(epoch, 0.3, scores, gen, affordable=1000))
        original.streak = torch.arange(n, dtype=torch.int32) % 3  # as after some fits
        original.excluded = torch.arange(n) % 7 == 0
        torch.save(original.state_dict(), tmp_path / "s.pt")
        copy = strategies.build(config, "classification")
        copy.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
        plans = [s.plan(strategies.EpochContext(3, 0.4, scores, torch.Generator().manual_seed(2), affordable=1000))
                 for s in (original, copy)]
        assert torch.equal(plans[0].mask, plans[1].mask), name


def test_what_cannot_be_resumed_is_one_line(tmp_path: Path, cli_main: Callable[..., CliResult]) -> None:
    cli_main("train", "--resume", str(tmp_path / "none")).one_line_error("--resume", "no such folder")
    cli_main("train", "--resume", str(tmp_path)).one_line_error("--resume", "not a run folder")
    (tmp_path / checkpoint.NAME).write_bytes(b"not a checkpoint")
    cli_main("train", "--resume", str(tmp_path)).one_line_error("--resume", "cannot be read")
    torch.save({"model": {}}, tmp_path / checkpoint.NAME)
    cli_main("train", "--resume", str(tmp_path)).one_line_error("--resume", "no resumable state")
    cli_main("train", "--resume", str(tmp_path), "--lr", "0.1").one_line_error("drop --lr")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed"}))
    cli_main("train", "--resume", str(tmp_path)).one_line_error("--resume", "completed")


def test_the_data_checksum_is_taken_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every checkpoint (the calibration's probe of the final save, the periodic ones, the final one) holds the data's
    checksum, taken once at set-up: a sum over all training inputs in each of them made the probe, and so the tail's
    reserve, as slow as the sum at its slowest."""
    clock = FakeClock()
    Recorder(monkeypatch, clock)
    taken = []
    real = checkpoint.fingerprint

    def fingerprint(run: Any) -> dict[str, Any]:
        taken.append(real(run))
        return taken[-1]

    monkeypatch.setattr(checkpoint, "fingerprint", fingerprint)
    out = tmp_path / "run"
    train(_config(out, strategy="full", save_checkpoints=2), now=clock)
    saved = [torch.load(path, weights_only=True)["data"] for path in sorted((out / "checkpoints").glob("*.pt"))]
    assert len(saved) == 2 and len(taken) == 1
    assert all(data["checksum"] == taken[0]["checksum"] for data in saved)
    assert torch.load(out / checkpoint.NAME, weights_only=True)["data"]["checksum"] == taken[0]["checksum"]


def test_a_checkpoint_of_other_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    Recorder(monkeypatch, clock, interrupt_at=20)
    out = tmp_path / "run"
    train(_config(out, strategy="full"), now=clock)
    state = torch.load(out / checkpoint.NAME, weights_only=True)
    state["data"]["checksum"][0] += 1.0  # as if the .npz had changed since
    torch.save(state, out / checkpoint.NAME)
    with pytest.raises(TimebudgetError, match="other data"):
        train(Config(resume=str(out), quiet=True), now=clock)
    state["data"]["checksum"][0] -= 1.0
    state["trained_model"] = None
    state["model"] = {"weight": torch.zeros(3)}
    torch.save(state, out / checkpoint.NAME)
    with pytest.raises(TimebudgetError, match="does not match model"):
        train(Config(resume=str(out), quiet=True), now=clock)
