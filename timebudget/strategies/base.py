"""What every selection strategy receives and returns, once per epoch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..scores import ScoreTable

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class EpochContext:
    """The state a strategy decides from at the start of an epoch.

    ``progress`` is the fraction of the training window used; ``affordable`` is how many samples the rest of the
    window can still train at the measured throughput (``None`` before throughput is known).
    """

    epoch: int
    progress: float
    scores: ScoreTable
    generator: torch.Generator
    affordable: float | None = None


@dataclass
class EpochPlan:
    """The subset to train this epoch (``mask`` over dataset positions, ``None`` = all) and per-sample loss weights
    (``None`` = all ones) that keep the gradient unbiased where the subset is a biased sample.

    ``refresh`` optionally names dataset positions whose scores the trainer should re-measure (forward only, no
    gradient, charged to the budget) before the epoch; the strategy sees the new scores at its next plan.
    """

    mask: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    phase: str = "full"
    refresh: torch.Tensor | None = None

    def kept(self, n: int) -> int:
        return n if self.mask is None else int(self.mask.sum())


class Strategy:
    """Base class: subclasses set ``name`` and implement :meth:`plan`.

    Every strategy is built as ``cls(config, task)`` from the run's :class:`~timebudget.config.Config` (its knobs:
    ``keep_fraction``, ``select_warmup``, ``anneal``, ``filter_noisy``) and the task ("classification" or
    "regression"), and may raise :class:`~timebudget.errors.TimebudgetError` for settings it cannot honour.
    """

    name = "base"

    def __init__(self, config: "Config", task: str) -> None:
        self.config = config
        self.task = task

    def plan(self, ctx: EpochContext) -> EpochPlan:
        raise NotImplementedError
