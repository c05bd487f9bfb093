"""Selection strategies: each decides, per epoch, which samples to train and with what weights."""
from __future__ import annotations

from .base import EpochContext, EpochPlan, Strategy
from .full import Full

STRATEGIES: dict[str, type[Strategy]] = {"full": Full}


def build(name: str, **knobs: object) -> Strategy:
    return STRATEGIES[name](**knobs)


__all__ = ["STRATEGIES", "EpochContext", "EpochPlan", "Strategy", "build"]
