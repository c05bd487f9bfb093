"""``hard``: highest scores first, a hard-example-mining baseline.

What it does: after the warm-up, each epoch trains only the samples with the highest running-average loss (and any
sample not yet scored), without reweighting, so the gradient is deliberately biased toward hard samples; the last
``anneal`` fraction of the budget trains on all data. When it helps: clean data whose easy samples are learnt early;
it hurts under label noise, since mislabelled samples keep the highest losses. Knobs: ``keep_fraction`` (default:
budget-sized), ``select_warmup``, ``anneal``.
"""
from __future__ import annotations

from .base import EpochContext, EpochPlan, ScoredStrategy


class Hard(ScoredStrategy):
    name = "hard"

    def select(self, ctx: EpochContext) -> EpochPlan:
        k = self.size(ctx)
        if k >= ctx.scores.n:
            return EpochPlan(phase="select")
        return EpochPlan(mask=self.ranked(ctx, ctx.scores.average, k).cpu(), phase="select")
