"""``random``: RS2, a fresh random subset each epoch, drawn without replacement across epochs.

What it does: each epoch trains ``k`` samples drawn at random from those not yet used in the current cycle; when fewer
than ``k`` are left, the epoch takes all of them plus fresh ones and a new cycle starts, so every sample is trained
once before any is repeated. It never looks at scores: a sample is deferred to a later epoch of the cycle, never
judged. When it helps: the strongest simple baseline for data selection (Okanovic et al., RS2, ICLR 2024 beat some 30
pruning methods on time-to-accuracy); over a run it is close to uniform training with more frequent epoch boundaries.
Knobs: ``keep_fraction`` (subset size as a share of the data, in whole batches; default: budget-sized, see
:func:`~timebudget.strategies.base.budget_fraction`, with no final full-data phase, which RS2 does not have).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import EpochContext, EpochPlan, Strategy, budget_fraction, top_mask, uniform

if TYPE_CHECKING:
    from ..config import Config


class Random(Strategy):
    name = "random"

    def __init__(self, config: "Config", task: str) -> None:
        super().__init__(config, task)
        self.used: torch.Tensor | None = None  # samples already trained in the current cycle

    def plan(self, ctx: EpochContext) -> EpochPlan:
        n = ctx.scores.n
        k = self.whole_batches((self.config.keep_fraction or budget_fraction(ctx, anneal=0.0)) * n, n)
        if self.used is None:
            self.used = torch.zeros(n, dtype=torch.bool, device=ctx.scores.last.device)
        fresh = ~self.used
        left = int(fresh.sum())
        if k >= n and left == n:
            return EpochPlan()
        draw = uniform(ctx)
        if left > k:
            mask = top_mask(draw.masked_fill(self.used, -1.0), k)
            self.used |= mask
        else:  # finish the cycle, then start the next one with the samples drawn to fill this epoch
            extra = top_mask(draw.masked_fill(fresh, -1.0), min(k, n) - left)
            mask = fresh | extra
            self.used = extra
        return EpochPlan(mask=mask.cpu(), phase="select")

    def state_dict(self) -> dict[str, Any]:
        return {"used": None if self.used is None else self.used.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.used = state["used"]
