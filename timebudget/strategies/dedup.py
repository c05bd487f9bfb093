"""``dedup``: train about one copy of each near-duplicated item per draw; a wrapper usable with any strategy.

What it does: on its first plan it asks :func:`timebudget.dedup.count_copies` how many near copies of each training
row the set holds (the time counts against the budget, as all planning does). Where copies are common, every epoch
then draws its rows from what the wrapped strategy planned, ``k`` of them (the summed weight in whole batches), row
``i`` with probability proportional to ``1 / count[i]``: a group of ``c`` copies gives about one of them per draw, a
different one each time, and a row without copies is kept. An epoch is as many such draws as fit in the wrapped
plan's size (see :func:`draws`), so a row may be trained more than once in it. The wrapped plan's loss weights are kept.

This is not unbiased for the training set's gradient, on purpose: it trains the distribution of distinct items, which
is what a copy-free sample of the world (and the test set) follows, where uniform training would fit the copying; the
copies that are kept still serve as augmentations of their item. An unscored row may be left out when a copy of it is
trained. When copies are rare, the inputs have few features, or counting would take more than its share of the
budget, the wrapper passes the wrapped plan through unchanged (``summary.json``'s ``strategy_stats.dedup`` says which
and why). Knob: ``dedup`` (``auto``, ``true``: count and act on any copies, ``false``: never look).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from .. import dedup, sampler
from .base import EpochContext, EpochPlan, Strategy

if TYPE_CHECKING:
    from ..config import Config


class Deduplicate(Strategy):
    def __init__(self, inner: Strategy, config: "Config", task: str, inputs: torch.Tensor | None) -> None:
        super().__init__(config, task)
        self.inner, self.inputs = inner, inputs
        self.name = inner.name
        self.copies: dedup.Copies | None = None  # decided at the first plan

    def plan(self, ctx: EpochContext) -> EpochPlan:
        plan = self.inner.plan(ctx)
        if self.copies is None:
            self.copies = self.detect()
            self.inputs = None  # the run's own tensor: not kept beyond the decision
        counts = self.copies.counts
        if counts is None:
            return plan
        n = len(counts)
        items = float(((1.0 / counts.float()) * (plan.mask if plan.mask is not None else 1.0)).sum())
        size = min(self.whole_batches(items, n), plan.kept(n))
        return EpochPlan(mask=None, weights=plan.weights, phase=f"{plan.phase}+dedup", refresh=plan.refresh,
                         repeats=draws(counts, plan.mask, size, max(1, plan.kept(n) // size), ctx.generator))

    def detect(self) -> dedup.Copies:
        if self.inputs is None:
            return dedup.Copies(None, "inputs not in memory (the loader path)")
        allowance = dedup.COST_SHARE * (self.config.seconds or 0.0)
        return dedup.count_copies(self.inputs, self.config.seed, self.config.dedup == "true", allowance)

    def backprop(self, step: Callable[..., torch.Tensor], forward: Callable[..., torch.Tensor],
                 batch_size: int) -> Callable[..., torch.Tensor] | None:
        return self.inner.backprop(step, forward, batch_size)

    def summary(self) -> dict[str, Any]:
        stats = dict(self.inner.summary())
        if self.copies is not None:
            stats["dedup"] = self.copies.summary()
        return stats

    def state_dict(self) -> dict[str, Any]:
        copies = self.copies
        return {"inner": self.inner.state_dict(), "dedup": None if copies is None else {
            "counts": copies.counts, "reason": copies.reason, "saving": copies.saving, "seconds": copies.seconds,
            "stats": copies.stats}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run keeps the first part's decision and counts (no second count); a checkpoint written before
        this wrapper existed holds the wrapped strategy's state alone, and that run trained every row."""
        if "dedup" not in state or "inner" not in state:
            self.inner.load_state_dict(state)
            self.copies = dedup.Copies(None, "resumed from a run without deduplication")
            return
        self.inner.load_state_dict(state["inner"])
        saved = state["dedup"]
        if saved is not None:
            counts = saved["counts"].cpu() if saved["counts"] is not None else None
            self.copies = dedup.Copies(counts, saved["reason"], saved["saving"], saved["seconds"], saved["stats"])


def draws(counts: torch.Tensor, allowed: torch.Tensor | None, size: int, rounds: int,
          generator: torch.Generator) -> torch.Tensor:
    """How often each row is trained in an epoch of ``rounds`` draws of ``size`` rows each, every draw among the
    ``allowed`` rows (all when ``None``) including row ``i`` with probability proportional to ``1 / counts[i]``
    (randomised systematic sampling: exact inclusion probabilities and exactly ``size`` rows; a group of ``c`` copies
    then gives exactly one per draw when ``size`` is the number of items, where weighted sampling by keys gave a copied
    item three picks in 61). Several draws per epoch keep an epoch as long as the wrapped plan's (one draw of about
    one row per item made epochs up to 10x shorter, and the planning each epoch pays took 14% of the training time at
    30 passes on the development ``redundant`` set)."""
    weight = 1.0 / counts.double()
    if allowed is not None:
        weight = weight * allowed
    pi = sampler.inclusion_probabilities(weight / weight.sum(), size)
    times = torch.zeros(len(counts), dtype=torch.long)
    for _ in range(rounds):
        times += sampler.systematic_sample(pi, generator)
    return times
