"""The divergence guard: a non-finite or exploding loss rolls back to the last good snapshot with a lower learning rate;
rollbacks in a row end the run as diverged, saved in its last good state, with one line and exit 5."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from timebudget import cli, guard
from timebudget.guard import DivergenceGuard

from conftest import CliResult

FAULTY_MODEL = """
import torch
from torch import nn


class Faulty(nn.Module):
    '''An MLP whose training forward goes wrong from its ``at``-th call: NaN once, NaN from then on, or outputs
    blown up x1e30 from then on. Calibration's two steps are calls 1 and 2.'''

    def __init__(self, features, num_outputs, mode, at):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, num_outputs))
        self.mode, self.at, self.calls = mode, at, 0

    def forward(self, x):
        out = self.body(x)
        if self.training:
            self.calls += 1
            if (self.mode == "nan_once" and self.calls == self.at) or (self.mode == "nan" and self.calls >= self.at):
                out = out * float("nan")
            elif self.mode == "explode" and self.calls >= self.at:
                out = out * 1e30
            elif self.mode.startswith("dead") and self.calls >= self.at and (self.mode == "dead" or self.calls < 50):
                out = self.body[3](0.0 * self.body[2](self.body[1](self.body[0](x))))  # dead ReLUs: zero gradients
        return out


def build(mode, at):
    def make(input_shape, num_outputs):
        features = 1
        for size in input_shape:
            features *= size
        return Faulty(features, num_outputs, mode, at)
    return make


nan_once = build("nan_once", 40)
nan = build("nan", 40)
explode = build("explode", 40)
nan_first = build("nan", 1)
dead = build("dead", 40)
dead_for_a_while = build("dead_for_a_while", 40)
"""


pytestmark = pytest.mark.usefixtures("warm_one_thread")


# --- the guard on its own -------------------------------------------------------------------------------------------
class Trainee:
    """A stand-in for the run: a state to snapshot and restore, and a learning-rate scale."""

    def __init__(self) -> None:
        self.state, self.lr_scale, self.restored = 0, 1.0, []

    def guard(self, max_rollbacks: int = 3, classes: int | None = None) -> DivergenceGuard:
        g = DivergenceGuard(2.3, torch.device("cpu"), lambda: self.state, self.restore, self.scale,
                            every_s=1.0, max_rollbacks=max_rollbacks, classes=classes)
        g.start(0.0)
        return g

    def restore(self, state: int) -> None:
        self.restored.append(state)
        self.state = state

    def scale(self, factor: float) -> None:
        self.lr_scale *= factor


def pause() -> Callable[[], None]:
    return lambda: None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30, 2.3 * guard.EXPLODE * 1.01])
def test_a_bad_loss_rolls_back_to_the_last_snapshot_and_lowers_the_lr(bad: float) -> None:
    run = Trainee()
    g = run.guard()
    run.state = 1
    g.observe(torch.tensor([0.5, 0.7]))
    assert g.check(1.5, pause) == guard.OK  # a snapshot is due: state 1 is good
    run.state = 2
    g.observe(torch.tensor([bad, bad]))  # the batch mean is what is checked
    for _ in range(guard.WINDOW - 1):  # checked with the steps after it, a window at a time: at most a window late
        assert g.check(1.6, pause) == guard.OK
        g.observe(torch.tensor([0.3, 0.2]))
    assert g.check(1.6, pause) == guard.ROLLED_BACK
    assert (run.restored, run.lr_scale) == ([1], guard.LR_FACTOR)
    g.observe(torch.tensor([0.3, 0.2]))
    assert g.check(1.7, pause) == guard.OK and run.restored == [1]


def test_a_snapshot_never_takes_a_state_whose_steps_were_not_checked() -> None:
    """A bad step still held (its window not full) when a snapshot falls due is checked first: the run rolls back
    instead of saving the state it spoilt."""
    run = Trainee()
    g = run.guard()
    run.state = 1
    g.observe(torch.tensor([0.5]))
    g.observe(torch.tensor([float("inf")]))
    assert not g.tripped()  # not yet checked: the window is not full
    assert g.check(1.5, pause) == guard.ROLLED_BACK and run.restored == [0] and g.snapshot == 0


class ArrivedEvent:
    """A stand-in for ``torch.cuda.Event`` whose copy has always arrived: the device path of ``tripped`` on a CPU."""

    made = 0

    def __init__(self) -> None:
        ArrivedEvent.made += 1

    def record(self) -> None:
        pass

    def query(self) -> bool:
        return True


def test_on_cuda_the_flag_is_copied_once_per_window_and_a_bad_step_is_read_at_most_a_window_late(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The device path reads the flag through a copy that is checked a step later; the flag changes only when a
    window is checked, so the copy is made once per window, not once per step (each is a device-to-host copy and an
    event on the host's critical path)."""
    monkeypatch.setattr(torch.cuda, "Event", ArrivedEvent)
    run = Trainee()
    g = run.guard()
    g.on_host = False
    ArrivedEvent.made = 0
    for _ in range(3 * guard.WINDOW):
        g.observe(torch.tensor([0.5, 0.7]))
        assert not g.tripped()
    assert ArrivedEvent.made == 3
    g.observe(torch.tensor([float("nan"), 0.7]))
    late = 0
    while not g.tripped():
        g.observe(torch.tensor([0.5, 0.7]))
        late += 1
    assert late == guard.WINDOW  # the window's last step checks it, the copy made then is read at the next step
    assert g.check(2.0, pause, tripped=True) == guard.ROLLED_BACK
    made = ArrivedEvent.made
    assert not g.tripped() and ArrivedEvent.made == made  # nothing checked since the rollback: nothing to copy


@pytest.mark.parametrize("sizes", [[64] * 20, [64, 64, 17, 64, 64, 64, 64, 64, 64, 3, 64]])
def test_windows_account_the_level_as_step_by_step(sizes: list[int]) -> None:
    """The running level after windows of equal and of mixed batch sizes is the exponential average of the step
    means, taken in order, as a step-by-step check computes it."""
    torch.manual_seed(0)
    g = Trainee().guard(classes=10)
    level = 2.3
    for size in sizes:
        losses = torch.rand(size) * 3
        g.observe(losses)
        level = guard.LEVEL_MOMENTUM * level + (1 - guard.LEVEL_MOMENTUM) * losses.mean().item()
    assert g.state_dict()["level"] == pytest.approx(level, rel=1e-5)
    assert not g.tripped()


@pytest.mark.parametrize("before, after, collapsed", [(4, 4, True), (3, 4, False), (7, 1, True), (1, 6, False)])
def test_a_row_of_label_only_steps_is_counted_across_windows(before: int, after: int, collapsed: bool) -> None:
    """A row that begins in one window and ends in the next is one row: ``before`` label-only steps end a window,
    ``after`` begin the next, healthy steps around them."""
    labels = torch.arange(64) % 10
    healthy = torch.linspace(0.5, 3.0, 64)
    run = Trainee()
    g = run.guard(classes=10)
    for t in range(guard.WINDOW - before):
        g.observe(healthy)
    for _ in range(before + after):
        g.observe(_label_only_losses(labels))
    for _ in range(guard.WINDOW - after):
        g.observe(healthy)
    assert g.tripped() is collapsed
    assert g.check(5.0, pause) == (guard.ROLLED_BACK if collapsed else guard.OK)


def test_normal_noise_is_not_an_explosion() -> None:
    run = Trainee()
    g = run.guard()
    for loss in [2.3, 1.0, 0.1, 0.01, 0.001, 5.0, 20.0]:  # a hard batch late in training: far above the level
        g.observe(torch.tensor([loss]))
    assert g.check(0.5, pause) == guard.OK and not run.restored


def test_a_resumed_guard_keeps_the_interrupted_runs_reference() -> None:
    """A resumed run's own first loss comes from the trained model (here 1e-4); the reference of the interrupted run
    (the untrained model's 2.3) comes back with the checkpoint, so a batch at 0.05 is noise, not an explosion."""
    first = Trainee().guard()
    for loss in [1.0, 0.01] + [1e-4] * 200:  # learnt: the running level is about 1e-4
        first.observe(torch.tensor([loss]))
    run = Trainee()
    resumed = DivergenceGuard(1e-4, torch.device("cpu"), lambda: run.state, run.restore, run.scale, every_s=1.0)
    resumed.start(0.0)
    resumed.load_state_dict(first.state_dict())
    resumed.observe(torch.tensor([0.05]))
    assert resumed.check(0.1, pause) == guard.OK and not run.restored
    older = first.state_dict()
    del older["reference"]  # a checkpoint written before the reference was saved: the resumed run's own stays
    fresh = DivergenceGuard(1e-4, torch.device("cpu"), lambda: run.state, run.restore, run.scale, every_s=1.0)
    fresh.load_state_dict(older)
    assert fresh.reference == 1e-4


def _label_only_losses(labels: torch.Tensor) -> torch.Tensor:
    """The per-sample losses of a network whose logits are one constant vector: each depends on the label alone."""
    logits = torch.linspace(-1.0, 1.0, 10).expand(len(labels), 10)
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


def test_a_collapse_to_constant_logits_rolls_back_after_a_row_of_steps_and_is_never_snapshotted() -> None:
    """A collapse goes back to the state training started from, not to the last snapshot: units die over tens of
    steps before the last one does, so the snapshots just before a collapse may be dying already."""
    run = Trainee()
    g = run.guard(classes=10)
    g.start(0.5)  # training starts half a second in (after calibration)
    labels = torch.arange(64) % 10
    run.state = 1
    g.observe(torch.linspace(0.5, 3.0, 64))
    assert g.check(1.5, pause) == guard.OK and g.snapshot == 1  # a healthy step: a snapshot
    run.state = 2
    for t in range(guard.COLLAPSE_STEPS - 1):  # a row one step short: nothing happens, and no snapshot is taken
        g.observe(_label_only_losses(labels[torch.randperm(64)]))
        assert g.check(2.5 + t, pause) == guard.OK
    assert g.snapshot == 1
    g.observe(_label_only_losses(labels))
    assert g.check(12.0, pause) == guard.ROLLED_BACK
    assert run.restored == [0] and run.lr_scale == guard.COLLAPSE_LR_FACTOR
    assert g.rollbacks[-1] == {"time": 12.0, "to_time": 0.5, "why": "collapse"}  # back to the start, and when


def test_a_learnt_batch_of_zero_losses_is_no_collapse() -> None:
    """A network that has learnt its data gives every sample a loss of exactly 0.0 in float32: one value, but the
    opposite of constant logits, whose losses are at least the batch's label entropy."""
    run = Trainee()
    g = run.guard(classes=10)
    for t in range(3 * guard.COLLAPSE_STEPS):
        g.observe(torch.zeros(64))
        assert g.check(0.1 * t, pause) == guard.OK
    assert not run.restored


def test_a_collapse_checked_after_a_healthy_step_is_still_a_collapse() -> None:
    """Under torchrun the check comes at the next agreement: a row of constant-logit steps, then one healthy step,
    then the check still rolls back to the start with the collapse's lower learning rate."""
    run = Trainee()
    g = run.guard(classes=10)
    labels = torch.arange(64) % 10
    run.state = 1
    for _ in range(guard.COLLAPSE_STEPS):
        g.observe(_label_only_losses(labels))
    g.observe(torch.linspace(0.5, 3.0, 64))
    assert g.check(2.0, pause) == guard.ROLLED_BACK
    assert run.restored == [0] and run.lr_scale == guard.COLLAPSE_LR_FACTOR and g.rollbacks[-1]["why"] == "collapse"


def test_losses_that_differ_between_samples_are_no_collapse() -> None:
    """An untrained network (small random logits: losses near ln 10, all different), a trained one, and a row of
    constant-logit steps broken by one healthy step never trip; nor does a batch too small to tell."""
    torch.manual_seed(0)
    labels = torch.arange(64) % 10
    run = Trainee()
    g = run.guard(classes=10)
    for t in range(3 * guard.COLLAPSE_STEPS):
        healthy = torch.nn.functional.cross_entropy(0.01 * torch.randn(64, 10), labels, reduction="none")
        g.observe(healthy if t % guard.COLLAPSE_STEPS == 3 else _label_only_losses(labels))
        assert g.check(0.1 * t, pause) == guard.OK
    small = run.guard(classes=10)
    for t in range(2 * guard.COLLAPSE_STEPS):
        small.observe(_label_only_losses(labels[:19]))
        assert small.check(0.1 * t, pause) == guard.OK
    regression = run.guard(classes=None)
    for t in range(2 * guard.COLLAPSE_STEPS):
        regression.observe(torch.full((64,), 0.5))
        assert regression.check(0.1 * t, pause) == guard.OK
    assert not run.restored


def bad_window(g: DivergenceGuard) -> None:
    """A window of NaN steps: the next check sees it, whether or not a snapshot is due."""
    for _ in range(guard.WINDOW):
        g.observe(torch.tensor([float("nan")]))


def test_rollbacks_in_a_row_are_divergence_and_a_good_snapshot_breaks_the_row() -> None:
    run = Trainee()
    g = run.guard(max_rollbacks=3)
    for t in (0.1, 0.2):
        bad_window(g)
        assert g.check(t, pause) == guard.ROLLED_BACK
    g.observe(torch.tensor([0.5]))
    assert g.check(1.5, pause) == guard.OK  # a good snapshot: the row starts again
    for t in (1.6, 1.7):
        bad_window(g)
        assert g.check(t, pause) == guard.ROLLED_BACK
    bad_window(g)
    assert g.check(1.8, pause) == guard.DIVERGED
    assert len(g.rollbacks) == 5 and run.lr_scale == guard.LR_FACTOR ** 4  # no lowering at the divergence


def test_agreed_votes_decide_for_every_rank() -> None:
    """Under torchrun the check acts on the ranks' agreed votes: another rank's bad loss rolls this (clean) rank back,
    rank 0's clock decides when a snapshot is taken, and the final check asks every rank."""
    run = Trainee()
    asked: list[bool] = []
    g = DivergenceGuard(2.3, torch.device("cpu"), lambda: run.state, run.restore, run.scale, every_s=1.0,
                        any_rank=lambda bad: asked.append(bad) or True)  # another rank's flag is set
    g.start(0.0)
    run.state = 1
    g.observe(torch.tensor([0.5]))
    assert not g.tripped() and g.due(1.5)
    assert g.check(1.5, pause, tripped=False, due=False) == guard.OK and g.snapshot == 0  # rank 0: not due yet
    assert g.check(1.6, pause, tripped=True, due=False) == guard.ROLLED_BACK and run.restored == [0]
    assert asked == []  # on a CPU the per-step votes hold every rank's flag: no extra collective
    run.state = 2
    assert g.check(1.7, pause, final=True) == guard.ROLLED_BACK and asked == [False] and run.restored == [0, 0]


def test_final_check_reads_the_flag_and_takes_no_snapshot() -> None:
    run = Trainee()
    g = run.guard()
    run.state = 7
    g.observe(torch.tensor([float("nan")]))
    assert g.check(0.1, pause, final=True) == guard.ROLLED_BACK and run.state == 0
    run.state = 8
    assert g.check(5.0, pause, final=True) == guard.OK and g.snapshot == 0


def test_clean_keeps_good_losses_and_replaces_bad_ones() -> None:
    g = Trainee().guard()
    cleaned = g.clean(torch.tensor([0.5, float("nan"), float("inf"), 1e30]), torch.tensor([9.0, 8.0, 7.0, 6.0]))
    assert cleaned.tolist() == [0.5, 8.0, 7.0, 6.0]


# --- in a run -------------------------------------------------------------------------------------------------------
@pytest.fixture
def faulty(user_module: Callable[[str, str], ModuleType]) -> ModuleType:
    return user_module("faulty", FAULTY_MODEL)


def _run(cli_main: Callable[..., CliResult], tmp_path: Path, model: str) -> tuple[CliResult, Path]:
    """A digits run; the diverging ones stop at their third rollback, a few steps after the 38th."""
    out = tmp_path / model
    result = cli_main("train", "--seconds", "10", "--model", f"faulty:{model}", "--out", str(out), "--quiet",
                      "--set", "log_every=5")
    return result, out


def test_a_nan_at_one_step_is_rolled_back_and_the_run_completes(
    faulty: ModuleType, cli_main: Callable[..., CliResult], tmp_path: Path
) -> None:
    result, out = _run(cli_main, tmp_path, "nan_once")
    assert result.code == 0, result.lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["rollbacks"]) == 1
    assert summary["test_metrics"]["accuracy"] > 0.5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (rollback,) = [r for r in records if r["event"] == "rollback"]
    assert rollback["lr_scale"] == guard.LR_FACTOR and not rollback["diverged"]
    assert all(math.isfinite(r["lr"]) for r in records if r["event"] == "step")
    assert torch.isfinite(torch.load(out / "scores.pt", weights_only=True)["average"]).all()


def test_a_network_that_collapses_for_a_while_is_rolled_back_and_learns(
    faulty: ModuleType, cli_main: Callable[..., CliResult], tmp_path: Path
) -> None:
    """From its 40th training call to its 49th the model's hidden ReLUs are dead (constant logits, loss near ln 10,
    nothing finite-checking can see): the guard rolls back once, for the collapse, and the run learns."""
    result, out = _run(cli_main, tmp_path, "dead_for_a_while")
    assert result.code == 0, result.lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [r["why"] for r in summary["rollbacks"]] == ["collapse"]
    assert summary["test_metrics"]["accuracy"] > 0.5


@pytest.mark.parametrize("model", ["nan", "explode", "dead"])
def test_persistent_divergence_stops_with_the_last_good_state_and_exit_5(
    faulty: ModuleType, cli_main: Callable[..., CliResult], tmp_path: Path, model: str
) -> None:
    result, out = _run(cli_main, tmp_path, model)
    assert result.code == cli.EXIT_DIVERGED
    result.one_line_error("diverged", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and len(summary["rollbacks"]) == guard.MAX_ROLLBACKS
    assert math.isfinite(summary["test_metrics"]["accuracy"])
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert checkpoint["parts"][-1]["status"] == "diverged"


def test_a_nan_loss_in_calibration_is_bad_input(
    faulty: ModuleType, cli_main: Callable[..., CliResult], tmp_path: Path
) -> None:
    result, out = _run(cli_main, tmp_path, "nan_first")
    result.one_line_error("loss", "nan", "faulty:nan_first")
    assert result.code == cli.EXIT_BAD_INPUT and not out.exists()
