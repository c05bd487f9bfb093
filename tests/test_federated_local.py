"""The federated room without Flower: a client's data share, its step slow-down, the round's learning-rate
schedule and budget start, node settings, and the trainer hooks a client round uses (no flwr needed)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from timebudget import Config, models, strategies, train
from timebudget.data import ArrayDataset, load
from timebudget.federated import local
from timebudget.errors import BudgetTooSmall
from timebudget.federated.settings import (DEADLINE_KEY, REPLY_PATH_KEY, SETUP_FILE, NodeSettings, RunSettings,
                                           budget_start, refuse_early, reply_reserve, round_sent_at)
from timebudget.trainer import RunHooks

from conftest import FakeClock


class TickingClock(FakeClock):
    """Moves ``tick`` seconds at every reading, so a run ends after a fixed number of readings."""

    def __init__(self, tick: float = 0.0) -> None:
        super().__init__()
        self.tick = tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def test_slowed_sleeps_its_share_of_each_step() -> None:
    clock, slept = TickingClock(), []

    def step() -> str:
        clock.t += 0.2
        return "done"

    assert local.slowed(0.25, now=clock, sleep=slept.append)(step)() == "done"
    assert slept == [pytest.approx(0.6)]  # a quarter of the speed: the step's 0.2 s and three times that asleep
    assert local.slowed(1.0)(step) is step


def test_lr_decays_within_each_round_or_across_the_federation() -> None:
    assert local.round_schedule(2, 4, "round") is None  # the run's own schedule: to zero within the round
    schedule = local.round_schedule(2, 4, "federation")
    assert schedule(0.0) == pytest.approx(0.75) and schedule(1.0) == pytest.approx(0.5)
    assert local.round_schedule(4, 4, "federation")(1.0) == 0.0


def test_budget_counts_from_the_servers_send_or_the_process_start_whichever_is_earlier() -> None:
    clock = TickingClock()
    assert budget_start(sent_at=95.0, cap_s=10.0, process_start=clock.t - 1.0, now=clock,
                              wall=lambda: 100.0) == clock.t - 5.0
    assert budget_start(sent_at=99.5, cap_s=10.0, process_start=clock.t - 2.0, now=clock,
                              wall=lambda: 100.0) == clock.t - 2.0
    assert budget_start(sent_at=50.0, cap_s=10.0, process_start=clock.t, now=clock,
                              wall=lambda: 100.0) == clock.t - 10.0


def test_the_round_is_sent_at_the_servers_deadline_less_its_cap_else_at_the_messages_creation() -> None:
    assert round_sent_at({DEADLINE_KEY: 130.0, "round-seconds": 30.0}, created_at=99.0) == 100.0
    assert round_sent_at({"round-seconds": 30.0}, created_at=99.0) == 99.0  # another ServerApp: no deadline


def test_the_reply_reserve_follows_the_longest_trip_the_server_measured() -> None:
    assert reply_reserve({}, first_round_s=2.0) == 2.0
    assert reply_reserve({REPLY_PATH_KEY: 0.4}, first_round_s=2.0) == pytest.approx(1.5 * 0.4 + 0.5)  # below 2 s


def test_node_settings_are_checked() -> None:
    assert NodeSettings.from_node_config({"partition-id": 1, "num-partitions": 3, "speed": 0.5}).speed == 0.5
    for bad in ({"partition-id": 0}, {"partition-id": 0, "num-partitions": 2, "speed": 0},
                {"partition-id": 0, "num-partitions": 2, "cap-seconds": -1}):
        with pytest.raises(Exception, match="node config|speed|cap-seconds"):
            NodeSettings.from_node_config(bad)


def test_client_bundle_keeps_the_clients_share_of_the_split() -> None:
    bundle = load("digits")
    run = RunSettings(partition="dirichlet:0.5", seed=1)
    parts = [local.client_bundle(bundle, run, NodeSettings(k, 3)) for k in range(3)]
    assert sum(len(p.train) for p in parts) == len(bundle.train)
    assert all(len(p.test) == len(bundle.test) for p in parts)  # the test split is whole unless asked for
    test_part = local.client_bundle(bundle, run, NodeSettings(0, 3), split="test")
    assert 0 < len(test_part.test) < len(bundle.test) and len(test_part.train) == len(bundle.train)


def test_run_hooks_shape_one_run(tmp_path: Path) -> None:
    torch.manual_seed(5)
    start_weights = models.build("cnn", (1, 8, 8), 10, "image").state_dict()
    n = 200
    scores = {"last": torch.full((n,), 2.0), "average": torch.full((n,), 2.0),
              "count": torch.full((n,), 3, dtype=torch.int32), "step": torch.zeros(n, dtype=torch.int64)}
    steps = []

    def wrap(step):
        def counted(*args):
            steps.append(1)
            return step(*args)

        return counted

    def first_200(bundle):
        return dataclasses.replace(bundle, train=ArrayDataset(bundle.train.x[:n], bundle.train.y[:n]))

    hooks = RunHooks(subset=first_200, weights=start_weights, scores=scores, schedule=lambda p: 0.5, wrap_step=wrap)
    clock = TickingClock(tick=0.02)
    result = train(Config(seconds=3.0, data="digits", out=str(tmp_path / "run"), quiet=True), start=clock.t, now=clock,
                   hooks=hooks)
    s = result.summary
    assert s["n_train"] == n
    assert len(steps) == s["steps"] + 2  # every loop step and the two calibration steps went through the wrapper
    assert s["final_lr"] == pytest.approx(0.5 * 0.05)  # the hook's schedule: half the default lr to the end
    saved = torch.load(tmp_path / "run" / "scores.pt")
    assert (saved["count"] >= 3).all()  # the loaded table, added to
    fresh = models.build("cnn", (1, 8, 8), 10, "image")
    assert any(not torch.equal(result.model.state_dict()[k], fresh.state_dict()[k]) for k in start_weights)


def test_a_round_the_last_measurements_cannot_fit_is_refused_at_once(tmp_path: Path) -> None:
    """A cap of 8 s less a 2 s reply leaves 6 s."""
    refuse_early(tmp_path, elapsed=5.0, cap_s=8.0, reply_s=2.0, server_round=2)  # nothing measured yet: no refusal
    with pytest.raises(BudgetTooSmall, match=r"6.50 s had passed .* the reply needs 2.00 s: nothing left to train"):
        refuse_early(tmp_path, elapsed=6.5, cap_s=8.0, reply_s=2.0, server_round=2)  # the 6 s are gone
    with pytest.raises(BudgetTooSmall, match="round cap 1.5 s is too small"):
        refuse_early(tmp_path, elapsed=0.0, cap_s=1.5, reply_s=2.0, server_round=2)  # the reply alone is over the cap
    (tmp_path / SETUP_FILE).write_text('{"import_s": 3.0, "setup_s": 1.0, "step_s": 0.1, "tail_s": 0.4}')
    refuse_early(tmp_path, elapsed=4.0, cap_s=8.0, reply_s=2.0, server_round=2)  # 4 + 1.5 fits in 6
    with pytest.raises(BudgetTooSmall, match="needed 4.50 s"):  # the imports still to come
        refuse_early(tmp_path, elapsed=4.0, cap_s=8.0, reply_s=2.0, server_round=2, before_import=True)


def test_a_forecast_refusal_does_not_stick(tmp_path: Path) -> None:
    """One slow round's measurements refuse the next round, not every round after it: the round after a refusal is
    tried (train's own calibration measures anew), and the one after that may be refused again."""
    (tmp_path / SETUP_FILE).write_text('{"import_s": 3.0, "setup_s": 1.0, "step_s": 0.1, "tail_s": 0.4}')
    outcomes = []
    for server_round in range(1, 5):
        try:
            refuse_early(tmp_path, elapsed=4.0, cap_s=8.0, reply_s=2.0, server_round=server_round, before_import=True)
            refuse_early(tmp_path, elapsed=5.0, cap_s=8.0, reply_s=2.0, server_round=server_round)  # after the imports
            outcomes.append("tried")
        except BudgetTooSmall:
            outcomes.append("refused")
    assert outcomes == ["refused", "tried", "refused", "tried"]
    with pytest.raises(BudgetTooSmall, match="nothing left to train"):  # a deadline already gone is no forecast
        refuse_early(tmp_path, elapsed=6.5, cap_s=8.0, reply_s=2.0, server_round=5)
    assert json.loads((tmp_path / SETUP_FILE).read_text())["setup_s"] == 1.0  # the measurements are kept


def test_a_strategys_bookkeeping_carries_into_the_next_round_and_its_per_run_values_start_fresh(tmp_path: Path) -> None:
    config = Config(seconds=5.0, data="digits", strategy="random", filter_noisy="true", dedup="false").validate()
    earlier = {"inner": {"used": torch.tensor([True, False, True])}, "next_fit": 0.9,
               "streak": torch.tensor([0, 2, 1], dtype=torch.int32), "excluded": torch.tensor([False, True, False])}
    fresh = strategies.build(config, "classification")
    hook = local.StrategyCarry(earlier)
    hook(fresh, torch.device("cpu"))
    assert torch.equal(fresh.inner.used, earlier["inner"]["used"])  # random's cycle goes on where it stopped
    assert torch.equal(fresh.streak, earlier["streak"]) and torch.equal(fresh.excluded, earlier["excluded"])
    assert fresh.next_fit == config.select_warmup  # counted in this run's progress: fresh, not 0.9 of the last run
    (tmp_path / "round_001").mkdir()
    hook.save(tmp_path / "round_001")
    saved = local.previous(tmp_path, 2, local.STRATEGY_FILE)
    assert torch.equal(saved["excluded"], earlier["excluded"]) and saved["next_fit"] == config.select_warmup
    untouched = strategies.build(dataclasses.replace(config, filter_noisy="auto"), "classification")
    local.StrategyCarry(None)(untouched, torch.device("cpu"))  # a first round: nothing to carry
    assert untouched.streak is None and untouched.inner.used is None
    wrapped = strategies.build(dataclasses.replace(config, dedup="auto"), "classification")  # near-duplicate sampling
    local.StrategyCarry({"inner": earlier, "dedup": None})(wrapped, torch.device("cpu"))  # around the same filter
    assert torch.equal(wrapped.inner.excluded, earlier["excluded"])
    assert wrapped.copies.reason == "no copies counted"  # this run's own decision, not the earlier round's None


def test_a_pass_cap_budgets_the_passes_from_the_last_rounds_pass_or_else_the_calibrated_step() -> None:
    measured = {"elapsed_s": 2.0, "step_s": 0.01, "steps_per_pass": 10, "reserve_s": 0.5}
    # 2 s in, 3 passes of the 0.5 s the last round measured, the tail with its margin
    assert local.pass_cap(3.0, 0.5)(measured) == pytest.approx(2.0 + 1.5 + 0.5)
    # a first round: 10 steps of 0.01 s a pass, from the calibration
    assert local.pass_cap(3.0, None)(measured) == pytest.approx(2.0 + 3 * 0.1 + 0.5)
    assert local.pass_cap(0.0, 0.5) is None  # no cap: train until the deadline
    summary = {"phase_starts": {"start-up": 0.0, "calibration": 0.5, "training": 1.0, "tail": 9.0}, "passes": 4.0}
    assert local.pass_seconds(summary) == 2.0 and local.pass_seconds({**summary, "passes": 0.0}) is None


def test_the_budget_hook_ends_the_run_early_and_its_lr_decays_by_then(tmp_path: Path) -> None:
    """A fake clock that moves 10 ms per step: a 20 s run would make dozens of passes; a hook asking for the
    calibration's elapsed seconds, two passes of calibrated steps and the tail makes two, its learning rate at zero at
    the end; a hook asking for more than the budget gets the budget."""
    asked = []

    def two_passes(measured):
        asked.append(measured)
        return measured["elapsed_s"] + 2 * measured["steps_per_pass"] * measured["step_s"] + measured["reserve_s"]

    def run(seconds: float, out: str, budget) -> dict:
        clock = FakeClock()

        def timed(step):
            def ten_ms(*args):
                clock.advance(0.01)
                return step(*args)

            return ten_ms

        config = Config(seconds=seconds, data="digits", out=str(tmp_path / out), quiet=True, lr_range_test=False)
        return train(config, start=clock.t, now=clock, hooks=RunHooks(budget=budget, wrap_step=timed)).summary

    s = run(20.0, "short", two_passes)
    assert asked[0]["steps_per_pass"] == -(-s["n_train"] // 64) and asked[0]["step_s"] == pytest.approx(0.01)
    assert s["budget_s"] < 20.0 and s["elapsed_s"] <= s["budget_s"]
    assert 1.5 <= s["passes"] <= 2.1 and s["final_lr"] < 0.05 * s["lr_choice"]["lr"]  # decayed by then
    assert run(3.0, "long", lambda measured: 1e9)["budget_s"] == 3.0


def test_max_local_passes_is_checked() -> None:
    with pytest.raises(Exception, match="max-local-passes"):
        RunSettings(max_local_passes=-1.0).validate()

