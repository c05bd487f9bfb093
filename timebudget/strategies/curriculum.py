"""``curriculum``: easy to hard, a subset that grows from the easiest samples to all of them as the budget runs out.

What it does: after the warm-up, each epoch trains the samples with the lowest running-average loss (and any sample
not yet scored); the kept share grows linearly with the budget used, from ``keep_fraction`` when selection starts to
all data when the final ``anneal`` phase begins. No reweighting: the early bias toward easy samples is the point.
When it helps: noisy or very heterogeneous data, where early steps on clean, easy samples give a better start;
mislabelled samples, whose losses stay high, join last. Knobs: ``keep_fraction`` (the starting share, default 0.5),
``select_warmup``, ``anneal``.
"""
from __future__ import annotations

from .base import EpochContext, EpochPlan, ScoredStrategy

DEFAULT_START = 0.5


class Curriculum(ScoredStrategy):
    name = "curriculum"

    def select(self, ctx: EpochContext) -> EpochPlan:
        n = ctx.scores.n
        start = self.config.keep_fraction or DEFAULT_START
        span = max(1e-9, 1.0 - self.config.anneal - self.warmup)
        pace = min(1.0, max(0.0, (ctx.progress - self.warmup) / span))
        k = self.whole_batches((start + (1.0 - start) * pace) * n, n)
        if k >= n:
            return EpochPlan(phase="select")
        return EpochPlan(mask=self.ranked(ctx, ctx.scores.average, k, high_first=False).cpu(), phase="select")
