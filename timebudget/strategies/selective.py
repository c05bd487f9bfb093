"""``selective``: the project's own: warm-up losses, dynamic re-ranking, a budget-sized subset, unbiased weights.

What it does, in phases over the budget:

1. ``warmup``: full shuffled data for the first ``select_warmup`` of the window (and at least one epoch), so every
   sample has a measured loss before ranking starts.
2. ``select``: each epoch re-ranks by running-average loss and keeps ``k`` samples (budget-sized: see
   :func:`~timebudget.strategies.base.budget_fraction`): the ``TOP_SHARE`` most informative ones (highest average
   loss, plus any sample not yet scored) for certain, and a uniform random draw of ``m`` of the other ``n - h``.
   A kept sample's loss is weighted ``1 / p_i``, ``p_i`` being its inclusion probability: 1 for the top, ``m / (n -
   h)`` for the drawn ones. So the epoch's summed gradient is an unbiased estimate of a full pass's (the
   Horvitz-Thompson estimator), and an epoch of ``k`` samples does, in expectation, a full pass's work in ``k / n`` of
   its time; the mean weight over the kept samples is ``n / k``, as in InfoBatch. (Weights normalised to mean 1,
   which make each step unbiased for the mean gradient instead, trained no better than ``full`` on our benchmark's
   development seeds: the gain of a subset is that it stands in for a full pass.) Every ``STALE_EPOCHS`` selection
   epochs, samples left out whose scores are stale (not measured in those epochs) are re-measured, oldest first, by
   a forward-only refresh of at most ``REFRESH_SHARE`` of the samples trained meanwhile, so a sample the model
   forgets can climb back. One larger refresh rather than one per epoch, because on a GPU a small forward pass costs
   about as much as a training step whatever its size.
3. ``anneal``: full data for the last ``anneal`` of the window, while the learning rate decays to zero, which washes
   out the subset's variance and any bias of the refreshed scores.

When it helps: budgets of a few to some tens of passes, where re-ranked subsets spend the steps on samples still being
learnt; with label noise combine it with ``filter_noisy``, since mislabelled samples rank as the most informative.
Knobs: ``keep_fraction`` (fixed subset size instead of budget-sized), ``select_warmup`` (default 0.1), ``anneal``.
"""
from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

import torch

from .base import EpochContext, EpochPlan, ScoredStrategy, top_mask, uniform

if TYPE_CHECKING:
    from ..config import Config

TOP_SHARE = 0.5  # half the subset is the top of the ranking, half a uniform draw of the rest
REFRESH_SHARE = 0.02  # on a CPU a forward costs about a third of a training step: under 1% of the time
STALE_EPOCHS = 3  # a score not measured in this many epochs is stale; refreshes come this many epochs apart


class Selective(ScoredStrategy):
    name = "selective"

    def __init__(self, config: "Config", task: str) -> None:
        super().__init__(config, task)
        self.marks: deque[torch.Tensor] = deque(maxlen=STALE_EPOCHS)  # the latest score step at each recent plan

    def select(self, ctx: EpochContext) -> EpochPlan:
        scores, n = ctx.scores, ctx.scores.n
        k = self.size(ctx)
        drawn = k - math.ceil(TOP_SHARE * k)
        top = self.ranked(ctx, scores.average, k - drawn)
        h = int(top.sum())
        if h + drawn >= n or drawn == 0:
            return EpochPlan(phase="select")
        picked = top_mask(uniform(ctx).masked_fill(top, -1.0), drawn)
        mask = top | picked
        weights = torch.ones_like(scores.average).masked_fill(picked, (n - h) / drawn)
        return EpochPlan(mask=mask.cpu(), weights=weights, phase="select", refresh=self.stale(ctx, mask, h + drawn))

    def state_dict(self) -> dict[str, Any]:
        return {"marks": [mark.cpu() for mark in self.marks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.marks = deque(state["marks"], maxlen=STALE_EPOCHS)

    def stale(self, ctx: EpochContext, mask: torch.Tensor, kept: int) -> torch.Tensor | None:
        """Every ``STALE_EPOCHS`` calls: the oldest-scored samples outside ``mask`` not measured in those epochs, at
        most ``REFRESH_SHARE`` of the ``kept`` samples per epoch in between; ``None`` otherwise or when there are
        none."""
        step = ctx.scores.step
        self.marks.append(step.max())
        if len(self.marks) < STALE_EPOCHS:
            return None
        age = (self.marks[0] - step).float().masked_fill(mask, -1.0)
        self.marks.clear()
        count = min(math.ceil(REFRESH_SHARE * STALE_EPOCHS * kept), ctx.scores.n - kept)
        oldest = torch.topk(age, count, sorted=False)
        index = oldest.indices[oldest.values > 0]
        return index.cpu() if len(index) else None
