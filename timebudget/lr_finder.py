"""The learning rate a run starts from when the user gives none: a rule, guarded by a short range test.

The rule (:func:`rule_lr`) is a careful hand-written loop's choice: SGD (Nesterov, momentum 0.9) at 0.1 for a batch of
128, scaled linearly with the batch size (Goyal et al. 2017) but capped at 2x, since on small data sets a large batch
is most of an epoch and the linear rule's premise (many steps, each a small part of it) fails: uncapped, a batch of
100,000 on 1,437 digits asked for lr 78. AdamW at 0.01 (0.005 for regression) for a batch of 64, scaled linearly
below it and flat above. At batch 64 (tables of 1,000 rows or more), under the budget's warm-up and linear decay to
zero, the built-in MLPs lost 0.7-3.3 accuracy points and 12-15% RMSE at the rates that were here before (0.002,
0.001) against rates 4-8x higher, on a plateau from 0.008 to 0.016 (0.005 to 0.008 for regression) at 2 to 30 passes
(development sets of ``benchmarks/budget_accuracy.py``, session 15). Tables of a few hundred rows train in batches of
16 or 32 (:func:`timebudget.trainer.default_batch`) and overfit within tens of passes; there the high rate lost: on
diabetes (353 rows, batch 16) at 1 s, MAE 55.1 at 0.005 and 54.2 at 0.0025 against 51.5 at 0.001 (10 seeds). Scaled
with the batch, the rate there is what it was (0.00125 at batch 16; above 64 a larger rate was not measured).

The guard (:func:`range_test`) is a learning-rate range test in the manner of fastai's ``lr_find`` (Smith 2017): from
the model's initial weights, a few steps at geometrically rising learning rates, on fresh batches, until the smoothed
loss blows up. The run's learning rate is then ``min(rule, blow-up / GUARD)``: the test never raises the rule's
value, it only lowers it for a model or data set on which the rule's value sits too close to divergence (a user's
model, an unusual loss surface). Its seconds count against the budget like any other: it runs only when
``TEST_STEPS`` steps at the calibrated step time fit in ``SHARE`` of the training window (:func:`affordable`),
otherwise the rule stands alone, with the warm-up (:func:`timebudget.schedules.default_warmup`) as the safety net.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

SGD_LR, SGD_BATCH, SCALE_CAP = 0.1, 128, 2.0
ADAMW_LR, ADAMW_BATCH = {"classification": 1e-2, "regression": 5e-3}, 64
TEST_STEPS = 30  # three decades at ten steps each
SPAN = (1e-2, 10.0)  # the test's learning rates, as multiples of the rule's
BLOW_UP = 4.0  # the smoothed loss this many times its minimum (or not finite) ends the test
GUARD = 3.0  # the run's learning rate stays this factor below the blow-up
SHARE = 0.05  # at most this share of the training window goes to the test
SMOOTHING = 0.7  # exponential smoothing of the test's losses (few steps: less than fastai's 0.98)


def clamp_batch(batch_size: int, n_train: int) -> int:
    """A batch larger than the training set is the training set: more is not a batch anyone can draw."""
    return max(1, min(batch_size, n_train))


def rule_lr(optimizer: str, batch_size: int, task: str = "classification") -> float:
    """The default peak learning rate for this optimizer, batch size and task (see the module docstring)."""
    if optimizer == "sgd":
        return SGD_LR * min(batch_size / SGD_BATCH, SCALE_CAP)
    return ADAMW_LR[task] * min(batch_size / ADAMW_BATCH, 1.0)


def affordable(step_s: float, window_s: float, steps: int = TEST_STEPS, share: float = SHARE) -> bool:
    """Whether ``steps`` steps of ``step_s`` seconds fit in ``share`` of a training window of ``window_s`` seconds."""
    return window_s > 0 and steps * step_s <= share * window_s


@dataclass
class RangeTest:
    """What the range test did: its learning rates and smoothed losses, where the loss blew up, and its cost."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    blow_up_lr: float | None = None  # None: no blow-up up to the span's top
    seconds: float = 0.0

    def safe_lr(self, rule: float) -> float:
        """The rule's learning rate, lowered to ``blow_up / GUARD`` when the test saw the loss blow up below that."""
        return rule if self.blow_up_lr is None else min(rule, self.blow_up_lr / GUARD)


def sweep(rule: float, steps: int = TEST_STEPS, span: tuple[float, float] = SPAN) -> list[float]:
    """Geometrically spaced learning rates from ``span[0] * rule`` to ``span[1] * rule``."""
    lo, hi = span[0] * rule, span[1] * rule
    return [lo * (hi / lo) ** (k / max(steps - 1, 1)) for k in range(steps)]


def range_test(
    step: Callable[[Any, float], float],
    batches: Iterator[Any],
    rule: float,
    now: Callable[[], float],
    steps: int = TEST_STEPS,
) -> RangeTest:
    """Run ``step(batch, lr) -> loss`` on successive ``batches`` at rising learning rates until the loss blows up.

    The caller restores the model and optimizer afterwards (the test leaves them trained at absurd learning rates).
    """
    result = RangeTest()
    t0 = now()
    smooth, best = None, math.inf
    for lr in sweep(rule, steps):
        loss = step(next(batches), lr)
        smooth = loss if smooth is None else SMOOTHING * smooth + (1 - SMOOTHING) * loss
        result.lrs.append(lr)
        result.losses.append(smooth)
        if not math.isfinite(smooth) or smooth > BLOW_UP * best:
            result.blow_up_lr = lr
            break
        best = min(best, smooth)
    result.seconds = now() - t0
    return result


def test_chunks(n: int, batch_size: int, seed: int, steps: int = TEST_STEPS) -> list[torch.Tensor]:
    """``steps`` full batches of indices, in fresh shuffles of the ``n`` training samples (as many as needed)."""
    gen = torch.Generator().manual_seed(seed + 2)  # its own stream: the run's order and augmentation are untouched
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(steps * batch_size / n))])
    return list(order.split(batch_size))[:steps]


@contextlib.contextmanager
def restored(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> Iterator[None]:
    """Put back the weights (BatchNorm statistics too), an empty optimizer state and the loss scale afterwards."""
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    scale = scaler.state_dict() if scaler.is_enabled() else None
    try:
        yield
    finally:
        model.load_state_dict(weights)
        optimizer.state.clear()
        if scale is not None:
            scaler.load_state_dict(scale)


@dataclass
class Choice:
    """The learning rate a run uses and how it was reached, for ``summary.json``."""

    lr: float
    rule_lr: float
    source: str  # "user", "rule" or "range test"
    range_test: dict[str, Any] | None = None
    skipped: str | None = None  # why no range test ran

    @property
    def seconds(self) -> float:
        """What the range test cost (0 when none ran)."""
        return self.range_test["seconds"] if self.range_test else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(
    user_lr: float | None,
    rule: float,
    enabled: bool,
    step_s: float,
    window_s: float,
    run_test: Callable[[], RangeTest],
) -> Choice:
    """The run's learning rate: the user's when given; else the rule's, guarded by a range test when one is
    ``enabled`` and ``affordable`` (``run_test`` runs it)."""
    if user_lr is not None:
        return Choice(user_lr, rule, "user", skipped="the learning rate was given")
    if not enabled:
        return Choice(rule, rule, "rule", skipped="lr_range_test is off")
    if not affordable(step_s, window_s):
        return Choice(rule, rule, "rule", skipped=f"{TEST_STEPS} steps of {step_s:.3g} s exceed {SHARE:.0%} of the "
                                                  f"{window_s:.3g} s training window")
    test = run_test()
    lr = test.safe_lr(rule)
    return Choice(lr, rule, "range test" if lr < rule else "rule", range_test=asdict(test))
