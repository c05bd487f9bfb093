"""Learning-rate schedules as functions of the budget fraction ``p`` in [0, 1], not of a guessed step count.

``p`` comes from :class:`timebudget.clock.BudgetClock.progress`: the share of the training window used. Every schedule
returns a multiplier of the base learning rate; ``linear`` (Li, Yumer and Ramanan, ICLR 2020) is the default because
it reaches exactly zero at the end of the window and is the most robust under a budget. A warm-up ramps linearly
from 0 over the first ``warmup`` fraction (by default :func:`default_warmup`); the schedule then runs over the rest,
still ending at ``p = 1``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Schedule = Callable[[float], float]


def linear(p: float) -> float:
    """1 at the start, exactly 0 at the end, never negative."""
    return max(0.0, 1.0 - p)


def cosine(p: float) -> float:
    """Half a cosine from 1 to 0: close to linear, a little more time at high learning rates."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))


def constant(p: float) -> float:
    """No decay: what a plain time-capped loop gives; a baseline, not a recommendation."""
    return 1.0


def step(milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1) -> Schedule:
    """x ``gamma`` at each fixed fraction of the budget: the classic step decay, placed by time."""

    def factor(p: float) -> float:
        return gamma ** sum(p >= m for m in milestones)

    return factor


def with_warmup(schedule: Schedule, warmup: float) -> Schedule:
    """Ramp from 0 to 1 over ``[0, warmup)``, then run ``schedule`` over ``[warmup, 1]`` rescaled to [0, 1]."""
    if warmup <= 0:
        return schedule

    def factor(p: float) -> float:
        if p < warmup:
            return p / warmup
        return schedule((p - warmup) / (1.0 - warmup))

    return factor


WARMUP_SHARE = (0.05, 0.15)  # the default warm-up's share of the training window: at least, at most
WARMUP_STEPS = 20  # and at least this many steps, within that bound


def default_warmup(step_s: float, window_s: float) -> float:
    """The warm-up used when none is given: 5% of the training window, or 20 steps if that is longer, at most 15%.

    Goyal et al. (2017) warm up for 5 of 90 epochs wherever the learning rate is large; as a share of the window
    that is about 5%. In a short budget 5% can be a handful of steps, too few to let BatchNorm statistics and
    momentum settle before the peak, hence the floor in steps. The cap keeps most of a very short window for
    training at a useful learning rate.
    """
    if window_s <= 0:
        return WARMUP_SHARE[1]
    lo, hi = WARMUP_SHARE
    return min(hi, max(lo, WARMUP_STEPS * step_s / window_s))


def build(name: str, warmup: float = 0.0, milestones: Sequence[float] = (0.5, 0.75)) -> Schedule:
    """The schedule registered under ``name`` (linear, cosine, step, constant), with optional warm-up."""
    base = {"linear": linear, "cosine": cosine, "constant": constant, "step": step(milestones)}[name]
    return with_warmup(base, warmup)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class TimeSchedule:
    """Drives an optimizer's learning rate from the budget fraction: ``apply(p)`` before each step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, schedule: Schedule) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.schedule = schedule
        self.lr = base_lr * schedule(0.0)

    def apply(self, p: float) -> float:
        self.lr = self.base_lr * self.schedule(min(1.0, max(0.0, p)))
        set_lr(self.optimizer, self.lr)
        return self.lr


class LinearLR:
    """The Li et al. budgeted schedule by step count, for users with their own loop.

    ``lr = base * (1 - k / total_steps)`` after ``k`` calls of :meth:`step`; unlike the authors' ``mtli/linearlr``
    it clamps at zero past ``total_steps`` instead of going negative. Not PyTorch's ``lr_scheduler.LinearLR``, which
    is a multiplicative ramp.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_step = 0

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self) -> None:
        self.last_step += 1
        factor = linear(self.last_step / self.total_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def state_dict(self) -> dict[str, int | list[float]]:
        return {"total_steps": self.total_steps, "base_lrs": self.base_lrs, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps = int(state["total_steps"])
        self.base_lrs = list(state["base_lrs"])
        self.last_step = int(state["last_step"])
