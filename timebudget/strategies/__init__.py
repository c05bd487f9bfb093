"""Selection strategies: each decides, per epoch, which samples to train and with what weights.

``full`` (uniform), ``random`` (RS2), ``infobatch``, ``hard``, ``curriculum``, ``selective`` (the project's own),
``importance`` (gradient-norm importance sampling) and ``selective-backprop`` (back-propagate the high-loss samples of
each batch); ``config.filter_noisy`` wraps any of them in the noisy-label filter (``auto``: it decides from the run's
own losses whether labels look noisy); ``config.dedup`` wraps the result in near-duplicate sampling (``auto``: only
where the inputs hold many near copies).
"""
from __future__ import annotations

from ..config import Config
from ..dedup import Copies
from .base import EpochContext, EpochPlan, Strategy
from .curriculum import Curriculum
from .dedup import Deduplicate, find_copies
from .full import Full
from .hard import Hard
from .importance import Importance
from .infobatch import InfoBatch
from .noisy import NoisyFilter
from .random import Random
from .selective import Selective
from .selective_backprop import SelectiveBackprop

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Full, Random, InfoBatch, Hard, Curriculum, Selective, Importance, SelectiveBackprop)
}


def build(config: Config, task: str, classes: int | None = None, copies: Copies | None = None) -> Strategy:
    """The strategy named by ``config.strategy``, configured from the run's config, behind the noisy-sample filter
    when ``config.filter_noisy`` is ``true``, or ``auto`` on a classification task (the filter then decides, with
    ``classes``, the number of classes, setting its chance loss ln(classes)), and behind near-duplicate sampling
    unless ``config.dedup`` is ``false`` (acting on ``copies``, what :func:`find_copies` counted at set-up; none
    given: no copies counted, every row trained)."""
    strategy = STRATEGIES[config.strategy](config, task)
    mode = config.filter_noisy
    if isinstance(mode, bool):
        mode = str(mode).lower()
    if mode == "true" or (mode == "auto" and task == "classification"):
        strategy = NoisyFilter(strategy, config, task, auto=mode == "auto", classes=classes)
    if config.dedup == "false":
        return strategy
    return Deduplicate(strategy, config, task, copies or Copies(None, "no copies counted"))


__all__ = ["STRATEGIES", "EpochContext", "EpochPlan", "Strategy", "build", "find_copies"]
