"""``train(config)`` in this process, with budgets of a few seconds that count from the call.

Each run is shared by the tests that read it. Timing bounds are loose on purpose: the benchmark measures how close
to the deadline runs end; here only a gross overshoot, or a run that gave up half its budget, fails.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from timebudget import config as config_module
from timebudget import models, trainer
from timebudget.config import Config
from timebudget.errors import BudgetTooSmall
from timebudget.trainer import TrainResult, per_sample_loss, train

from conftest import FakeClock, check_summary, load_checkpoint, step_records


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Train on one thread: these tiny models are fastest that way, and on a machine shared with other processes two
    OpenMP threads can stall each other for a third of a second per step, leaving a run of a few seconds no steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """Synthetic 10-class images with an MLP (quick steps on a CPU) and an evaluation every 0.5 s."""
    out = tmp_path_factory.mktemp("image") / "run"
    return train(Config(seconds=5.0, data="synthetic", model="mlp", eval_every=0.5, log_every=1, out=str(out),
                        quiet=True))


@pytest.fixture(scope="module")
def regression_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Targets around 100 with a spread of ~20, of which noise of std 5 cannot be learnt: a model's MAE in the
    data's own units lies between ~4 (the noise) and ~16 (predicting the mean)."""
    g = np.random.default_rng(3)
    w = g.normal(size=8)
    w /= np.linalg.norm(w)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = g.normal(size=(n, 8)).astype(np.float32)
        return x, (100.0 + 20.0 * x @ w + g.normal(scale=5.0, size=n)).astype(np.float32)

    (x_train, y_train), (x_test, y_test) = split(1000), split(250)
    path = tmp_path_factory.mktemp("npz") / "regression.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="module")
def regression_run(regression_npz: Path) -> TrainResult:
    return train(Config(seconds=4.0, data=str(regression_npz), out=str(regression_npz.parent / "run"), quiet=True))


def test_summary_is_complete_and_the_run_used_its_budget(image_run: TrainResult) -> None:
    summary = check_summary(image_run.out_dir, 5.0)
    assert summary == json.loads(json.dumps(image_run.summary))
    assert set(summary["test_metrics"]) == {"accuracy"}


def test_model_learns_well_above_chance(image_run: TrainResult) -> None:
    """Ten classes: chance is 0.1; the prototypes are easy to tell apart once anything is learnt."""
    assert image_run.summary["test_metrics"]["accuracy"] > 0.5


def test_metrics_log_records_steps_and_periodic_evaluations(image_run: TrainResult) -> None:
    """A line per step (``log_every=1``) with a finite loss and, with ``eval_every``, evaluations inside the budget;
    the linear schedule has almost reached zero at the last step."""
    steps = step_records(image_run.out_dir, image_run.summary)
    assert len(steps) >= 2 and all(math.isfinite(r["loss"]) for r in steps)
    assert 0.0 <= steps[-1]["lr"] < 0.25 * image_run.config.lr
    records = [json.loads(line) for line in (image_run.out_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert evals and all(0.0 <= r["accuracy"] <= 1.0 and r["time"] < image_run.summary["elapsed_s"] for r in evals)


def test_checkpoint_restores_the_trained_weights(image_run: TrainResult) -> None:
    """Loaded into a freshly built model of the same kind, the checkpoint gives back the trained weights."""
    checkpoint = load_checkpoint(image_run.out_dir, image_run.summary)
    fresh = models.build("mlp", (3, 16, 16), 10, "image")
    fresh.load_state_dict(checkpoint["model"])
    trained = image_run.model.state_dict()
    assert all(torch.equal(tensor, trained[name].cpu()) for name, tensor in fresh.state_dict().items())
    assert checkpoint["optimizer"]["param_groups"] and checkpoint["rng"]["torch"].dtype == torch.uint8


def test_config_yaml_is_the_resolved_config(image_run: TrainResult) -> None:
    """The saved config reads back as a valid Config with every data-dependent default filled in."""
    saved = config_module.apply(yaml.safe_load((image_run.out_dir / "config.yaml").read_text())).validate()
    assert dataclasses.asdict(saved) == dataclasses.asdict(image_run.config)
    assert None not in (saved.optimizer, saved.batch_size, saved.lr, saved.weight_decay)
    assert (saved.seconds, saved.out) == (5.0, str(image_run.out_dir))


@pytest.mark.parametrize(("task", "decay"), [("classification", 0.05), ("regression", 1.0)])
def test_adamws_default_weight_decay_follows_the_task_and_a_users_value_stands(task: str, decay: float) -> None:
    """Left null, AdamW decays classification weights by 0.05 and regression weights by 1.0 (README, "Session 18": at
    0.01 a longer budget bought a worse regression model); a value the user gives, zero included, is kept."""
    from timebudget import data

    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6)).astype(np.float32)
    y = g.integers(0, 3, size=40) if task == "classification" else g.normal(size=40).astype(np.float32)
    bundle = data.from_arrays("toy", x[:30], y[:30], x[30:], y[30:])
    resolved = trainer.resolve_defaults(Config(seconds=1.0), bundle)
    assert (resolved.optimizer, resolved.weight_decay) == ("adamw", decay)
    assert trainer.resolve_defaults(Config(seconds=1.0, weight_decay=0.0), bundle).weight_decay == 0.0


@pytest.mark.parametrize(("rows_per_class", "image", "smoothing"), [
    ((20, 18, 15), False, 0.1),  # rarest/largest 0.75: smoothed
    ((40, 10, 4), False, 0.0),  # 0.10, under SMOOTHING_MIN_BALANCE: strongly imbalanced, plain cross-entropy
    ((20, 18, 15), True, 0.0),  # images: not smoothed
])
def test_label_smoothing_defaults_to_tabular_classes_that_are_not_strongly_imbalanced(
        rows_per_class: tuple[int, ...], image: bool, smoothing: float) -> None:
    """Left null, tabular classification smooths its labels by 0.1 unless its rarest class has under 15% of the
    largest one's rows (README, "Session 18"); images, regression and datasets whose labels need every sample loaded
    do not; a value the user gives, zero included, stands. The smoothing reaches the loss the run trains with."""
    from timebudget import data

    y = np.repeat(np.arange(3), rows_per_class)
    x = np.random.default_rng(0).normal(size=(len(y), 2, 3) if image else (len(y), 6)).astype(np.float32)
    if image:
        x = x[:, None]
    bundle = data.from_arrays("toy", x, y, x[:6], y[:6])
    resolved = trainer.resolve_defaults(Config(seconds=1.0), bundle)
    assert resolved.label_smoothing == smoothing
    given = trainer.resolve_defaults(Config(seconds=1.0, label_smoothing=0.0), bundle)
    assert given.label_smoothing == 0.0
    regression = data.from_arrays("toy", x, y.astype(np.float32), x[:6], y[:6].astype(np.float32))
    assert trainer.resolve_defaults(Config(seconds=1.0), regression).label_smoothing == 0.0
    lazy = [(torch.as_tensor(xi), int(yi)) for xi, yi in zip(x, y)]  # labels only reachable by loading every sample
    unscanned = data.DataBundle("toy", lazy, lazy, "classification", 3, tuple(x.shape[1:]), bundle.kind)
    assert trainer.resolve_defaults(Config(seconds=1.0), unscanned).label_smoothing == 0.0
    confident, target = torch.tensor([[20.0, 0.0, 0.0]]), torch.tensor([0])  # a sure right answer
    assert per_sample_loss(given, "classification")(confident, target).item() < 1e-6
    if smoothing:  # smoothed, the wrong classes' share costs about 0.1 * 20 * 2/3
        assert per_sample_loss(resolved, "classification")(confident, target).item() > 1.0


def test_label_smoothing_follows_the_distinct_items_where_near_duplicate_sampling_trains_them(tmp_path: Path) -> None:
    """Balanced items copied unevenly: by rows the rarest class has 20 of the largest's 136 rows (0.147, plain
    cross-entropy), by distinct items 20 of 20. A run whose near-duplicate sampling counts the copies trains the items,
    so it smooths (README, "Session 21"); without that sampling, or with the user's value, the rows' rule stands."""
    from timebudget import data

    g = np.random.default_rng(0)
    labels = np.arange(60) % 3  # 20 distinct items per class
    copies = np.where(np.arange(60) < 12, np.where(labels == 0, 30, 1), 1)  # four class-0 items, 30 copies each
    items = g.random((60, 300)).astype(np.float32)
    x = np.repeat(items, copies, axis=0) + g.normal(0.0, 0.02, (int(copies.sum()), 300)).astype(np.float32)
    y = np.repeat(labels, copies)
    assert np.bincount(y).tolist() == [136, 20, 20]
    bundle = data.from_arrays("toy", x, y, items, labels)
    assert trainer.default_smoothing(bundle) == 0.0
    assert trainer.default_smoothing(bundle, torch.as_tensor(np.repeat(copies, copies))) == 0.1
    path = tmp_path / "copied.npz"
    np.savez(path, x_train=x, y_train=y, x_test=items, y_test=labels)
    for name, fields, smoothing in (("auto", {}, 0.1), ("off", {"dedup": "false"}, 0.0),
                                    ("given", {"label_smoothing": 0.0}, 0.0)):
        result = train(Config(seconds=3.0, data=str(path), out=str(tmp_path / name), quiet=True, **fields))
        saved = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        assert saved["label_smoothing"] == smoothing, name
        assert result.summary["strategy_stats"].get("dedup", {}).get("active", False) == (name != "off"), name


def test_regression_reports_mae_and_rmse_in_the_data_units(regression_run: TrainResult) -> None:
    """Float targets train as regression; errors are reported in the targets' own units (so above the noise floor
    of ~4) and beat predicting the mean (~16) by far."""
    summary = check_summary(regression_run.out_dir, 4.0)
    assert summary["task"] == "regression"
    assert set(summary["test_metrics"]) == {"mae", "rmse"}
    assert 3.0 < summary["test_metrics"]["mae"] < 8.0
    assert summary["test_metrics"]["rmse"] >= summary["test_metrics"]["mae"]


USER_CODE = """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    class Probe(nn.Module):
        def __init__(self, input_shape, num_outputs):
            super().__init__()
            self.input_shape, self.num_outputs = input_shape, num_outputs
            self.layer = nn.Linear(input_shape[0], num_outputs)

        def forward(self, x):
            return self.layer(x)

    def make_model(input_shape, num_outputs):
        return Probe(input_shape, num_outputs)

    def blobs(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        return TensorDataset(torch.randn(n, 4, generator=g) + 3 * nn.functional.one_hot(y, 4).float(), y)

    def make_data():
        return blobs(600, 0), blobs(150, 1)
"""


def test_user_data_and_model_train_into_a_default_run_folder(user_module: Callable[[str, str], ModuleType]) -> None:
    """``module:function`` data and model from the current directory: the model gets the sample shape and class
    count, learns the separable blobs, and without ``out`` the run lands in a new folder under ``runs/``."""
    module = user_module("user_code", USER_CODE)
    result = train(Config(seconds=3.0, data="user_code:make_data", model="user_code:make_model", lr=0.05, quiet=True))
    assert isinstance(result.model, module.Probe)
    assert (result.model.input_shape, result.model.num_outputs) == ((4,), 3)
    assert result.out_dir.parent == Path("runs")
    assert check_summary(result.out_dir, 3.0)["test_metrics"]["accuracy"] > 0.8


TIMED_MODEL = """
    import math
    from torch import nn

    class ComputeTime:
        '''A clock that moves only while the model computes: a fixed cost per sample, three times as much in training
        (forward and backward) as in evaluation, ``factor`` times more from ``slow_from`` on (a competing process).'''

        def __init__(self):
            self.t, self.factor, self.slow_from = 0.0, 1.0, math.inf

        def __call__(self):
            return self.t

        def spend(self, samples, training):
            slow = self.factor if self.t >= self.slow_from else 1.0
            self.t += 1e-4 * samples * (3 if training else 1) * slow

    clock = ComputeTime()

    class Timed(nn.Module):
        def __init__(self, input_shape, num_outputs):
            super().__init__()
            self.layer = nn.Linear(math.prod(input_shape), num_outputs)

        def forward(self, x):
            clock.spend(len(x), self.training)
            return self.layer(x.flatten(1))

    def make(input_shape, num_outputs):
        return Timed(input_shape, num_outputs)
"""


@pytest.mark.parametrize(
    ("slow_from", "factor"),
    [
        pytest.param(math.inf, 1.0, id="steady"),
        pytest.param(1.0, 3.0, id="3x-from-half-way"),
        pytest.param(0.5, 10.0, id="10x-from-a-quarter"),
    ],
)
def test_whole_run_ends_by_the_deadline_on_compute_time(
    user_module: Callable[[str, str], ModuleType], tmp_path: Path, slow_from: float, factor: float
) -> None:
    """The trainer's own decisions, exactly: time passes only while its model computes, so calibration, steps, the
    tail and any re-timing cost what they compute, with no real clock involved. Whether the machine stays quiet or
    gets slower mid-run, the summary is written by the deadline, and most of the budget is used for training."""
    module = user_module("timed_model", TIMED_MODEL)
    module.clock.factor, module.clock.slow_from = factor, slow_from
    result = train(Config(seconds=2.0, data="synthetic", model="timed_model:make", out=str(tmp_path / "run"),
                          quiet=True), now=module.clock)
    assert 0.8 * 2.0 <= result.summary["elapsed_s"] <= 2.0


@pytest.mark.parametrize(
    ("task", "loss", "out", "y", "expected"),
    [
        ("classification", "cross_entropy", [[2.0, 0.0], [0.0, 0.0]], [0, 1], [math.log1p(math.exp(-2)), math.log(2)]),
        ("regression", "mse", [[1.0], [3.0]], [0.0, 1.0], [1.0, 4.0]),
        ("regression", "l1", [[1.0, 2.0], [3.0, 3.0]], [[0.0, 0.0], [1.0, 1.0]], [1.5, 2.0]),
    ],
)
def test_losses_are_per_sample(task: str, loss: str, out: list[Any], y: list[Any], expected: list[float]) -> None:
    """The next issue ranks samples by their loss, so each loss has one value per sample, never a batch mean."""
    loss_fn = per_sample_loss(Config(seconds=1, loss=loss, label_smoothing=0.0), task)
    target = torch.tensor(y) if task == "classification" else torch.tensor(y, dtype=torch.float32)
    assert loss_fn(torch.tensor(out), target).tolist() == pytest.approx(expected)


def test_too_small_a_budget_names_the_minimum_and_writes_nothing(tmp_path: Path) -> None:
    """Calibration (timed with a clock that spends a second per reading) shows the budget cannot fit start-up, a
    step and the tail: refused before training, with the minimum in seconds, and no run folder."""
    ticks = iter(range(10**6))
    out = tmp_path / "run"
    with pytest.raises(BudgetTooSmall) as info:
        train(Config(seconds=5.0, out=str(out), quiet=True), now=lambda: float(next(ticks)))
    minimum = re.search(r"minimum .* about (\d+) s", str(info.value))
    assert minimum and int(minimum.group(1)) > 5
    assert not out.exists()


def test_budget_spent_by_start_up_still_names_the_minimum(tmp_path: Path) -> None:
    with pytest.raises(BudgetTooSmall, match=r"minimum .*\d+ s"):
        train(Config(seconds=1.0, out=str(tmp_path / "run"), quiet=True), start=time.monotonic() - 2.0)


@pytest.mark.parametrize("caller_froze", [False, True])
def test_the_collector_walks_only_the_runs_objects_during_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caller_froze: bool) -> None:
    """Inside a run, the objects that were there before it (torch's, the caller's) are frozen out of the cyclic
    garbage collector, so a full collection does not stall a step for a quarter of a second; afterwards the caller's
    objects are collectable again, and a caller that froze its own keeps them frozen."""
    seen: list[int] = []
    real = trainer._Run.open_folder

    def open_folder(run: Any) -> None:
        seen.append(gc.get_freeze_count())
        real(run)

    monkeypatch.setattr(trainer._Run, "open_folder", open_folder)
    if caller_froze:
        gc.freeze()
    before = gc.get_freeze_count()
    try:
        train(Config(seconds=3.0, data="synthetic", model="mlp", out=str(tmp_path / "run"), quiet=True, device="cpu"))
        assert seen and seen[0] > 0
        after = gc.get_freeze_count()  # frozen objects that lost their last reference are freed all the same
        assert 0.9 * before < after <= before if caller_froze else after == 0
    finally:
        gc.unfreeze()


def test_a_runs_objects_are_collected_when_it_ends_also_after_a_refused_run(tmp_path: Path) -> None:
    """A run's objects hold reference cycles; had they still been garbage when the next run froze the collector,
    they would have been kept for good (session 23: 24 MB a run, until two tables of about 560 runs each exhausted
    the machine). After each run none of its objects is left, nor after one refused by an exception and the run that
    follows it."""
    def live_runs() -> int:
        return sum(type(o) is trainer._Run for o in gc.get_objects())

    gc.collect()  # what earlier tests left (a caller that froze the collector collects its runs itself)
    config = Config(seconds=3.0, data="synthetic", model="mlp", quiet=True, device="cpu")
    for i in range(2):
        train(dataclasses.replace(config, out=str(tmp_path / f"run{i}")))
        assert live_runs() == 0
    try:
        train(dataclasses.replace(config, seconds=1.0, out=str(tmp_path / "refused")), start=time.monotonic() - 2.0)
    except BudgetTooSmall:
        pass
    else:
        pytest.fail("the budget was spent before the run began, yet it was not refused")
    train(dataclasses.replace(config, out=str(tmp_path / "after")))
    assert live_runs() == 0


def test_tail_probe_scale_is_the_evaluations_slowdown_bounded_by_the_steps(fake_clock: FakeClock) -> None:
    """The probe is timed at calibration (median of three); a step slowdown within the hysteresis is no change. A
    re-timed probe gives the evaluation's own slowdown, at least 1 and at most the steps' slowdown (a probe caught by
    the scheduler reads far more than the steps show). Probing keeps to its share of the elapsed time."""
    cost = [0.1]

    def probe() -> None:
        fake_clock.advance(cost[0])

    tail = trainer._TailProbe(probe, fake_clock, hysteresis=1.5, share=0.02)
    assert tail.reference == pytest.approx(0.1)
    assert not tail.load_changed(1.4) and tail.load_changed(1.6) and tail.load_changed(0.6)
    cost[0] = 0.25  # the evaluation slows 2.5x while the steps slowed 10x
    assert tail.retime(10.0) == pytest.approx(2.5)
    assert not tail.load_changed(12.0) and tail.load_changed(1.0)  # judged against the last probe's slowdown
    cost[0] = 3.0  # a probe caught by the scheduler: 30x while the steps show 2x
    assert tail.retime(2.0) == pytest.approx(2.0)
    cost[0] = 0.05
    assert tail.retime(1.0) == 1.0  # faster than at calibration: the calibrated tail stands
    assert tail.assume(4.0) == 4.0
    assert tail.spent == pytest.approx(3 * (0.25 + 3.0 + 0.05))
    assert not tail.affordable(elapsed=100.0, slowdown=1.0)  # 9.9 s spent + 0.3 s > 2% of 100 s
    assert tail.affordable(elapsed=600.0, slowdown=1.0)
    # over its share, a probe is still taken when it costs less than the reserve the assumption would add
    assert tail.affordable(elapsed=100.0, slowdown=1.0, at_stake=0.5)  # 0.3 s < 0.5 s
    assert not tail.affordable(elapsed=100.0, slowdown=1.0, at_stake=0.2)


@pytest.mark.parametrize(("kind", "n", "batch"), [("image", 1437, 64), ("image", 7291, 128), ("tabular", 353, 16),
                                                   ("tabular", 700, 32), ("tabular", 8000, 64), ("tabular", 100_000, 64)])
def test_default_batch_depends_on_the_data_kind_and_size(kind: str, n: int, batch: int) -> None:
    """Images keep the textbook 64/128; tables take 16 below 500 samples, 32 below 1,000 and 64 above (cheap steps,
    more updates, and on a few hundred samples the small batch's noise regularises)."""
    from timebudget.trainer import default_batch

    assert default_batch(kind, n) == batch
