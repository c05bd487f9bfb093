"""Selection strategies: each decides, per epoch, which samples to train and with what weights.

``full`` (uniform), ``random`` (RS2), ``infobatch``, ``hard``, ``curriculum`` and ``selective`` (the project's own);
``config.filter_noisy`` wraps any of them in the GaussianMixture noisy-label filter.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import EpochContext, EpochPlan, Strategy
from .curriculum import Curriculum
from .full import Full
from .hard import Hard
from .infobatch import InfoBatch
from .noisy import NoisyFilter
from .random import Random
from .selective import Selective

if TYPE_CHECKING:
    from ..config import Config

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Full, Random, InfoBatch, Hard, Curriculum, Selective)
}


def build(config: "Config", task: str) -> Strategy:
    """The strategy named by ``config.strategy``, configured from the run's config, behind the noisy-sample filter
    when ``config.filter_noisy`` is set."""
    strategy = STRATEGIES[config.strategy](config, task)
    return NoisyFilter(strategy, config, task) if config.filter_noisy else strategy


__all__ = ["STRATEGIES", "EpochContext", "EpochPlan", "Strategy", "build"]
