"""``dedup``: train about one copy of each near-duplicated item per draw; a wrapper usable with any strategy.

What it does: at set-up :func:`find_copies` asks :func:`timebudget.dedup.count_copies` how many near copies of each
training row the set holds (the time counts against the budget, as all set-up does; the trainer needs the answer
before its first step, as the default label smoothing follows the classes of the distinct items). Where copies are
common, every epoch then draws its rows from what the wrapped strategy planned, ``k`` of them (the summed weight in
whole batches), row ``i`` with probability proportional to ``1 / count[i]``: a group of ``c`` copies gives about one of
them per draw, a different one each time, and a row without copies is kept. An epoch is as many such draws as fit in
the wrapped plan's size (see :func:`draws`), so a row may be trained more than once in it. The wrapped plan's loss
weights are kept.

This is not unbiased for the training set's gradient, on purpose: it trains the distribution of distinct items, which
is what a copy-free sample of the world (and the test set) follows, where uniform training would fit the copying; the
copies that are kept still serve as augmentations of their item. An unscored row may be left out when a copy of it is
trained. When copies are rare, the inputs have few features, or counting would take more than its share of the
budget, the wrapper passes the wrapped plan through unchanged (``summary.json``'s ``strategy_stats.dedup`` says which
and why). Knob: ``dedup`` (``auto``, ``true``: count and act on any copies, ``false``: never look).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from .. import dedup, sampler
from .base import EpochContext, EpochPlan, Strategy, Wrapper

if TYPE_CHECKING:
    from ..config import Config


class Deduplicate(Wrapper):
    def __init__(self, inner: Strategy, config: "Config", task: str, copies: dedup.Copies) -> None:
        super().__init__(inner, config, task)
        self.name = inner.name
        self.copies = copies  # a resumed run's are its checkpoint's (load_state_dict)

    def plan(self, ctx: EpochContext) -> EpochPlan:
        counts = self.copies.counts
        if counts is None:
            return self.inner.plan(ctx)
        n = len(counts)
        share = 1.0 / counts.double()  # a row's share of its item
        plan = self.inner.plan(dataclasses.replace(ctx, items=float(share.sum())))
        if plan.mask is not None:
            share = share * plan.mask
        size = min(self.whole_batches(float(share.sum()), n), plan.kept(n))
        return EpochPlan(mask=None, weights=plan.weights, phase=f"{plan.phase}+dedup", refresh=plan.refresh,
                         repeats=draws(share, size, max(1, plan.kept(n) // size), ctx.generator))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "dedup": self.copies.summary()}

    def state_dict(self) -> dict[str, Any]:
        copies = self.copies
        return {"inner": self.inner.state_dict(), "dedup": {
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
        if saved is None:  # written by a run that stopped before its first plan, which counted copies then
            self.copies = dedup.Copies(None, "resumed from a run that had not counted its copies")
            return
        counts = saved["counts"].cpu() if saved["counts"] is not None else None
        self.copies = dedup.Copies(counts, saved["reason"], saved["saving"], saved["seconds"], saved["stats"])


def find_copies(config: "Config", inputs: torch.Tensor | None) -> dedup.Copies:
    """The run's near copies among ``inputs`` (the training inputs where they are in memory), as ``config.dedup`` asks;
    the budget sets what projecting and counting may take (:func:`timebudget.dedup.count_allowance`). A resumed run does
    not count: its checkpoint holds the first part's decision."""
    if config.dedup == "false":
        return dedup.Copies(None, "dedup: false")
    if config.resume:
        return dedup.Copies(None, "resumed: the checkpoint holds the decision")
    if inputs is None:
        return dedup.Copies(None, "inputs not in memory (the loader path)")
    return dedup.count_copies(inputs, config.seed, config.dedup == "true", config.seconds or 0.0)


def draws(share: torch.Tensor, size: int, rounds: int, generator: torch.Generator) -> torch.Tensor:
    """How often each row is trained in an epoch of ``rounds`` draws of ``size`` rows each, every draw including row
    ``i`` with probability proportional to ``share[i]`` (``1 / counts[i]`` for a row the wrapped plan allows, else 0)
    (randomised systematic sampling: exact inclusion probabilities and exactly ``size`` rows; a group of ``c`` copies
    then gives exactly one per draw when ``size`` is the number of items, where weighted sampling by keys gave a copied
    item three picks in 61). Several draws per epoch keep an epoch as long as the wrapped plan's (one draw of about
    one row per item made epochs up to 10x shorter, and the planning each epoch pays took 14% of the training time at
    30 passes on the development ``redundant`` set)."""
    pi = sampler.inclusion_probabilities(share / share.sum(), size)
    times = torch.zeros(len(share), dtype=torch.long)
    for _ in range(rounds):
        times += sampler.systematic_sample(pi, generator)
    return times
