"""Selection strategies: each decides, per epoch, which samples to train and with what weights."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import EpochContext, EpochPlan, Strategy
from .full import Full

if TYPE_CHECKING:
    from ..config import Config

STRATEGIES: dict[str, type[Strategy]] = {"full": Full}


def build(config: "Config", task: str) -> Strategy:
    """The strategy named by ``config.strategy``, configured from the run's config."""
    return STRATEGIES[config.strategy](config, task)


__all__ = ["STRATEGIES", "EpochContext", "EpochPlan", "Strategy", "build"]
