"""``infobatch``: InfoBatch (Qin et al., ICLR 2024), unbiased random pruning of well-learnt samples.

What it does: the score is each sample's last training loss. Each epoch keeps every sample at or above the mean
score and a uniform random ``1 - r`` of those below it, and multiplies the loss of the kept below-mean samples by
the inverse of their inclusion probability, ``1 / (1 - r)``, so each epoch's summed gradient is unbiased for a full
pass's. The first epoch (no scores yet) and the last ``anneal`` fraction of the budget train on all data. Unlike the
paper, the pruned count is exact rather than a coin flip per sample, and adjusted so the subset is whole batches
(see :meth:`~timebudget.strategies.base.Strategy.whole_batches`), the weight using the realised share; and the
full-data phase is placed by time, not by epoch count. When it helps: many epochs over data where most samples are
learnt early; the realised saving depends on the loss distribution, not on ``r`` alone. Knobs: ``keep_fraction``
(sets ``r = 1 - keep_fraction``; default ``r = 0.5``, the paper's), ``anneal`` (the paper's 12.5% by default),
``prune_min_passes``.

Short classification budgets train all data: an epoch is pruned only when the window affords at least
``prune_min_passes`` passes in all (the throughput so far times the window, from :class:`EpochContext`'s
``affordable`` and ``progress``; 0 prunes always, as the paper). Pruning pays by repeating the samples still being
learnt more often; in a run of a few passes there is little to repeat, and the rescaled losses only add variance. In
the three reported ``benchmarks/budget_accuracy.py`` tables of sessions 7-9, InfoBatch's few-pass cell (2-5 passes
realised) was below ``full`` on 4, 6 and 5 of the 6 classification sets (median of the 18 cells -0.5 point), while at
10 passes it was level or ahead. The default, 8, was set on the development sets (see the config field's comment).
Where near-duplicate sampling has counted copies, the passes are over distinct items (session 19): on the reported
``redundant`` set (each item ten times) two passes over the rows are twenty over its items, and there the paper's rule
led the gated default by 0.76 ±0.35 point over 40 seeds; on development draws (30 seeds) counting items gained +0.24
±0.42 there and -0.04 ±0.45 on the Zipf-copied set, within noise.

Regression trains all data at any budget unless ``prune_min_passes`` is 0 (the paper's rule for both tasks). Session
10 had kept pruning regression at every budget (lower RMSE at few passes under SGD and the old AdamW rate); under
session 15's AdamW rate the development check (``regression`` drawn with data seed 100, training seeds 500-509)
found InfoBatch minus ``full`` RMSE -0.000 ±0.008 at 2 passes, +0.006 ±0.005 at 10 and +0.002 ±0.004 at 30: no gain
anywhere and a loss at 10 (the fresh tables of session 17 then found the default level with ``full``). A plausible
reason, not measured: a regression set's persistently high losses are its noisiest targets, and pruning trains them
twice as often as the rest, where this set already overfits with more passes (RMSE 0.39 at 10 passes, 0.41 at 30).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .base import EpochContext, EpochPlan, ScoredStrategy, top_mask, uniform

if TYPE_CHECKING:
    from ..config import Config

DEFAULT_PRUNE = 0.5


class InfoBatch(ScoredStrategy):
    name = "infobatch"

    def __init__(self, config: "Config", task: str) -> None:
        super().__init__(config, task)
        self.warmup = 0.0  # InfoBatch prunes from the second epoch on
        self.prune = 1.0 - config.keep_fraction if config.keep_fraction is not None else DEFAULT_PRUNE

    def select(self, ctx: EpochContext) -> EpochPlan:
        gate = self.config.prune_min_passes
        if gate > 0 and (self.task != "classification" or planned_passes(ctx) < gate):
            return EpochPlan(phase="select")
        last, seen, n = ctx.scores.last, ctx.scores.seen, ctx.scores.n
        mean = (last * seen).sum() / seen.sum().clamp_min(1)
        below = seen & (last < mean)
        candidates = int(below.sum())
        drop = min(candidates - 1, n - self.whole_batches(n - self.prune * candidates, n))
        if drop <= 0:
            return EpochPlan(phase="select")
        pruned = top_mask(uniform(ctx).masked_fill(~below, -1.0), drop)
        weights = torch.ones_like(last).masked_fill(below & ~pruned, candidates / (candidates - drop))
        return EpochPlan(mask=(~pruned).cpu(), weights=weights, phase="select")


def planned_passes(ctx: EpochContext) -> float:
    """Passes over the data the whole window affords at the throughput so far: ``affordable`` samples fit in the
    remaining ``1 - progress`` of it. Infinite while the throughput is unknown (nothing is decided from it then).
    Where near-duplicate sampling has counted copies, the passes are over the distinct items (``ctx.items``): two
    passes over rows that hold each item ten times repeat every item twenty times."""
    if ctx.affordable is None or ctx.progress >= 1.0:
        return math.inf
    return ctx.affordable / ((1.0 - ctx.progress) * (ctx.items or ctx.scores.n))
