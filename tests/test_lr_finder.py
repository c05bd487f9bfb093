"""The default learning rate: the capped scaling rule, the batch clamp, and the range test that guards the rule, on
fake clocks (pure functions) and in whole runs timed by their own compute (a clock that moves only while the model
computes), so the test's cost, what it is charged to and when it is skipped are checked exactly."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from conftest import FakeClock
from timebudget import lr_finder
from timebudget.config import Config
from timebudget.trainer import train


@pytest.mark.parametrize(
    ("optimizer", "batch", "task", "expected"),
    [("sgd", 64, "classification", 0.05), ("sgd", 128, "classification", 0.1), ("sgd", 256, "regression", 0.2),
     ("sgd", 512, "classification", 0.2), ("sgd", 100_000, "classification", 0.2),
     ("adamw", 16, "classification", 2.5e-3), ("adamw", 64, "classification", 1e-2),
     ("adamw", 100_000, "classification", 1e-2), ("adamw", 16, "regression", 1.25e-3),
     ("adamw", 64, "regression", 5e-3)],
)
def test_rule_rate_scales_with_the_batch_up_to_its_cap(optimizer: str, batch: int, task: str, expected: float) -> None:
    """SGD: linear below and up to 2x the reference batch of 128, flat above (a batch of 100,000 no longer asks for
    78). AdamW: linear below the reference batch of 64, flat above."""
    assert lr_finder.rule_lr(optimizer, batch, task) == pytest.approx(expected)


@pytest.mark.parametrize(("batch", "n", "expected"), [(64, 1437, 64), (1437, 1437, 1437), (100_000, 1437, 1437)])
def test_batch_is_clamped_to_the_training_set(batch: int, n: int, expected: int) -> None:
    assert lr_finder.clamp_batch(batch, n) == expected


def test_sweep_spans_three_decades_around_the_rule() -> None:
    lrs = lr_finder.sweep(0.1, steps=30)
    assert len(lrs) == 30
    assert (lrs[0], lrs[-1]) == (pytest.approx(1e-3), pytest.approx(1.0))
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([ratios[0]] * 29)  # geometric


def fake_step(clock: FakeClock, blow_up_at: float | None, step_s: float = 0.25) -> Callable[[int, float], float]:
    """A step costing ``step_s`` on the fake clock whose loss falls until ``blow_up_at``, then explodes."""

    def step(batch: int, lr: float) -> float:
        clock.advance(step_s)
        if blow_up_at is not None and lr >= blow_up_at:
            return math.inf if lr >= 2 * blow_up_at else 50.0
        return 2.3 / (1 + 10 * lr)

    return step


def test_range_test_stops_at_the_blow_up_and_is_timed_on_the_clock(fake_clock: FakeClock) -> None:
    """The first learning rate whose smoothed loss exceeds 4x the best so far ends the test; its seconds are the
    clock's, so a caller can charge them to the budget."""
    result = lr_finder.range_test(fake_step(fake_clock, blow_up_at=0.2), iter(range(100)), 0.1, fake_clock)
    first_above = next(lr for lr in lr_finder.sweep(0.1) if lr >= 0.2)
    assert result.blow_up_lr == pytest.approx(first_above)
    assert result.seconds == pytest.approx(0.25 * len(result.lrs))
    assert len(result.lrs) < lr_finder.TEST_STEPS
    assert result.safe_lr(0.1) == pytest.approx(first_above / lr_finder.GUARD)


def test_range_test_without_blow_up_keeps_the_rule(fake_clock: FakeClock) -> None:
    result = lr_finder.range_test(fake_step(fake_clock, blow_up_at=None), iter(range(100)), 0.1, fake_clock)
    assert result.blow_up_lr is None and len(result.lrs) == lr_finder.TEST_STEPS
    assert result.safe_lr(0.1) == 0.1  # never raised above the rule
    assert result.seconds == pytest.approx(0.25 * lr_finder.TEST_STEPS)


@pytest.mark.parametrize(
    ("user_lr", "enabled", "step_s", "window_s", "source", "ran"),
    [
        pytest.param(0.05, True, 0.01, 100.0, "user", False, id="user-lr"),
        pytest.param(None, False, 0.01, 100.0, "rule", False, id="off"),
        pytest.param(None, True, 0.01, 5.0, "rule", False, id="too-short"),  # 30 * 0.01 = 0.3 s > 5% of 5 s
        pytest.param(None, True, 0.01, 6.0, "range test", True, id="just-fits"),  # 0.3 s = 5% of 6 s
    ],
)
def test_choice_runs_the_test_only_when_asked_for_and_affordable(
    user_lr: float | None, enabled: bool, step_s: float, window_s: float, source: str, ran: bool
) -> None:
    calls: list[int] = []

    def run_test() -> lr_finder.RangeTest:
        calls.append(1)
        return lr_finder.RangeTest(lrs=[0.1, 0.15], losses=[2.0, 9.0], blow_up_lr=0.15, seconds=0.3)

    choice = lr_finder.choose(user_lr, 0.1, enabled, step_s, window_s, run_test)
    assert bool(calls) == ran and choice.source == source
    assert choice.lr == pytest.approx({"user": 0.05, "rule": 0.1, "range test": 0.05}[source])
    assert (choice.range_test is not None) == ran and (choice.skipped is None) == ran


# --- whole runs, timed by their own compute ----------------------------------------------------------------------
COMPUTE_MODEL = """
    import math
    import torch
    from torch import nn

    class ComputeTime:
        '''Moves only while a model computes: 1e-4 s per sample, 3x in training (forward and backward).'''

        def __init__(self):
            self.t = 0.0

        def __call__(self):
            return self.t

    clock = ComputeTime()

    class Scaled(nn.Module):
        '''A linear model whose logits are multiplied by ``gain``: the loss surface is ``gain**2`` times as sharp,
        so a learning rate fine for a plain linear model makes this one diverge.'''

        def __init__(self, input_shape, num_outputs, gain):
            super().__init__()
            self.layer = nn.Linear(math.prod(input_shape), num_outputs)
            self.gain = gain

        def forward(self, x):
            clock.t += 1e-4 * len(x) * (3 if self.training else 1)
            return self.gain * self.layer(x.flatten(1))

    def regression():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2560, 8, generator=g)
        y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(2560, 1, generator=g)
        data = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.Subset(data, range(2048)), torch.utils.data.Subset(data, range(2048, 2560))

    def sharp(input_shape, num_outputs):
        return Scaled(input_shape, num_outputs, 30.0)

    def plain(input_shape, num_outputs):
        return Scaled(input_shape, num_outputs, 1.0)
"""


def run(user_module: Callable[[str, str], ModuleType], tmp_path: Path, name: str, seconds: float,
        data: str = "synthetic", **fields: object) -> dict:
    module = user_module("compute_model", COMPUTE_MODEL)
    module.clock.t = 0.0
    config = Config(seconds=seconds, data=data, model=f"compute_model:{name}", optimizer="sgd",
                    out=str(tmp_path / name), quiet=True, **fields)
    return train(config, now=module.clock).summary


def test_range_test_cost_is_charged_to_the_budget(user_module: Callable[[str, str], ModuleType],
                                                  tmp_path: Path) -> None:
    """A budget of 2,000 steps affords the test: it runs before the window opens, its seconds pass on the run's
    clock (training starts that much later), and the run still ends by the deadline."""
    summary = run(user_module, tmp_path, "plain", 60.0)
    test = summary["lr_choice"]["range_test"]
    step_s = 3e-4 * 64  # batch 64 of 2,048 samples
    assert test is not None and test["seconds"] == pytest.approx(step_s * len(test["lrs"]))
    assert summary["startup_s"] >= test["seconds"]
    assert summary["elapsed_s"] <= 60.0


def test_budget_too_short_for_the_range_test_skips_it(user_module: Callable[[str, str], ModuleType],
                                                      tmp_path: Path) -> None:
    summary = run(user_module, tmp_path, "plain", 3.0)
    choice = summary["lr_choice"]
    assert choice["range_test"] is None and "exceed 5%" in choice["skipped"]
    assert choice["lr"] == choice["rule_lr"] == pytest.approx(0.05)


def test_model_that_diverged_at_the_old_default_trains_now(user_module: Callable[[str, str], ModuleType],
                                                           tmp_path: Path) -> None:
    """A linear regression whose outputs are scaled by 30 (a loss surface 900 times as sharp as the data's):
    the old default (SGD lr 0.1 at batch 128, so 0.05 at 64, no warm-up) sends its error to infinity or NaN; the
    default now (the range test lowering the rule, then a warm-up) fits it (targets have unit scale, noise 0.1)."""
    old = run(user_module, tmp_path / "old", "sharp", 30.0, data="compute_model:regression", lr=0.05, warmup=0.0)
    new = run(user_module, tmp_path / "new", "sharp", 30.0, data="compute_model:regression")
    assert not old["test_metrics"]["mae"] < 10.0  # NaN or huge
    assert new["lr_choice"]["source"] == "range test" and new["lr_choice"]["lr"] < 0.01
    assert new["test_metrics"]["mae"] < 0.2


def test_batch_larger_than_the_data_is_the_data_with_a_capped_lr(user_module: Callable[[str, str], ModuleType],
                                                                 tmp_path: Path) -> None:
    """``batch_size=100000`` on 2,048 samples: full-batch steps at lr 0.2, not 0.1 x 100000/128 = 78."""
    summary = run(user_module, tmp_path, "plain", 20.0, batch_size=100_000, lr_range_test=False)
    assert summary["lr_choice"]["lr"] == pytest.approx(0.2)
    assert summary["samples_trained"] == summary["steps"] * 2048
    assert summary["test_metrics"]["accuracy"] > 0.9
    assert torch.isfinite(torch.tensor(summary["final_lr"]))
