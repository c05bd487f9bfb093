"""What every selection strategy receives and returns, once per epoch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..scores import ScoreTable


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
    (``None`` = all ones) that keep the gradient unbiased where the subset is a biased sample."""

    mask: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    phase: str = "full"

    def kept(self, n: int) -> int:
        return n if self.mask is None else int(self.mask.sum())


class Strategy:
    """Base class: subclasses set ``name`` and implement :meth:`plan`."""

    name = "base"

    def plan(self, ctx: EpochContext) -> EpochPlan:
        raise NotImplementedError
