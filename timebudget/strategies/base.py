"""What every selection strategy receives and returns, once per epoch, and the rules the score-based ones share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..scores import ScoreTable

if TYPE_CHECKING:
    from ..config import Config

# The budget-sized subset (see :func:`budget_fraction`): the rest of the selection phase should train the subset at
# least this many times over, so it is re-ranked at least this often before the final full-data phase ...
RERANKS = 4
# ... and never shrinks below this share of the data, which bounds the importance weights (a quarter trained worse
# than a half on the development seeds) and keeps every epoch long enough that planning stays a small part of it.
MIN_FRACTION = 0.5


@dataclass
class EpochContext:
    """The state a strategy decides from at the start of an epoch.

    ``progress`` is the fraction of the training window used; ``affordable`` is how many samples the rest of the
    window can still train at the measured throughput (``None`` before throughput is known); ``items`` is how many
    distinct items the ``scores.n`` rows hold where near-duplicate sampling has counted their copies (``None``: every
    row its own item), so that passes are counted over what the run actually repeats.
    """

    epoch: int
    progress: float
    scores: ScoreTable
    generator: torch.Generator
    affordable: float | None = None
    items: float | None = None


@dataclass
class EpochPlan:
    """The subset to train this epoch (``mask`` over dataset positions, ``None`` = all) and per-sample loss weights
    (``None`` = all ones) that keep the gradient unbiased where the subset is a biased sample.

    ``repeats``, when given, replaces ``mask`` for a strategy that draws with replacement: how many times each position
    is trained this epoch (an int tensor; the trainer shuffles the positions, each repeated so often, into one order).

    ``refresh`` optionally names dataset positions whose scores the trainer should re-measure (forward only, no
    gradient, charged to the budget) before the epoch; the strategy sees the new scores at its next plan.
    """

    mask: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    phase: str = "full"
    refresh: torch.Tensor | None = None
    repeats: torch.Tensor | None = None

    def kept(self, n: int) -> int:
        if self.repeats is not None:
            return int(self.repeats.sum())
        return n if self.mask is None else int(self.mask.sum())


class Strategy:
    """Base class: subclasses set ``name`` and implement :meth:`plan`.

    Every strategy is built as ``cls(config, task)`` from the run's :class:`~timebudget.config.Config` (its knobs:
    ``keep_fraction``, ``select_warmup``, ``anneal``, ``filter_noisy``) and the task ("classification" or
    "regression"), and may raise :class:`~timebudget.errors.TimebudgetError` for settings it cannot honour.

    Masks are returned on the CPU (the trainer applies them to the CPU shuffle); weights stay on the scores' device.
    """

    name = "base"

    def __init__(self, config: "Config", task: str) -> None:
        self.config = config
        self.task = task

    def plan(self, ctx: EpochContext) -> EpochPlan:
        raise NotImplementedError

    def backprop(self, step: Callable[..., torch.Tensor], forward: Callable[..., torch.Tensor],
                 batch_size: int) -> Callable[..., torch.Tensor] | None:
        """A step of the strategy's own, ``(x, y, weights, index) -> per-sample losses``, built from the run's ``step``
        and its gradient-free ``forward``; ``None`` (all but Selective-Backprop): the loop calls ``step`` itself."""
        return None

    def summary(self) -> dict[str, Any]:
        """What the strategy counted over the run, for ``summary.json``'s ``strategy_stats``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to plan as this one would (tensors, numbers, lists): nothing for a strategy that
        decides from the scores and the context alone."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (its tensors arrive on the training device)."""

    def whole_batches(self, k: float, n: int) -> int:
        """``k`` rounded to whole batches (at least one), at most ``n``: then every batch of a subset epoch has the same
        shape, which cuDNN's autotuner and compiled models need to stay fast (with a new trailing-batch size each
        epoch, InfoBatch trained 7x fewer samples than ``full`` in a 4 s digits run on an H200)."""
        batch = self.config.batch_size or 1
        return min(n, max(batch, round(k / batch) * batch))


class Wrapper(Strategy):
    """A strategy around another one (the noisy-sample filter, near-duplicate sampling): it edits the ``inner``
    strategy's plan, and passes on what it does not change, the inner strategy's own step and its counts."""

    def __init__(self, inner: Strategy, config: "Config", task: str) -> None:
        super().__init__(config, task)
        self.inner = inner

    def backprop(self, step: Callable[..., torch.Tensor], forward: Callable[..., torch.Tensor],
                 batch_size: int) -> Callable[..., torch.Tensor] | None:
        return self.inner.backprop(step, forward, batch_size)

    def summary(self) -> dict[str, Any]:
        return dict(self.inner.summary())


class ScoredStrategy(Strategy):
    """A strategy that ranks samples by their scores, in three phases over the budget.

    ``warmup``: full data until ``warmup`` of the window is used and at least one epoch is done, so scores exist;
    ``select``: the subclass's :meth:`select`; ``anneal``: full data in the last ``config.anneal`` of the window, so
    the subset's bias is washed out while the learning rate decays to zero. A sample without a score is never left
    out: subclasses rank with :meth:`ranked`.
    """

    def __init__(self, config: "Config", task: str) -> None:
        super().__init__(config, task)
        self.warmup = config.select_warmup

    def plan(self, ctx: EpochContext) -> EpochPlan:
        if ctx.progress >= 1.0 - self.config.anneal:
            return EpochPlan(phase="anneal")
        if ctx.epoch == 0 or ctx.progress < self.warmup:
            return EpochPlan(phase="warmup")
        return self.select(ctx)

    def select(self, ctx: EpochContext) -> EpochPlan:
        raise NotImplementedError

    def size(self, ctx: EpochContext) -> int:
        """Samples to keep: ``keep_fraction`` of the data when set, else the budget-sized share, in whole batches."""
        fraction = self.config.keep_fraction or budget_fraction(ctx, self.config.anneal)
        return self.whole_batches(fraction * ctx.scores.n, ctx.scores.n)

    @staticmethod
    def ranked(ctx: EpochContext, score: torch.Tensor, k: int, high_first: bool = True) -> torch.Tensor:
        """Bool mask of the ``k`` samples ranked first by ``score``, plus every sample that has no score yet."""
        unseen = ~ctx.scores.seen
        key = (score if high_first else -score).masked_fill(unseen, float("inf"))
        return top_mask(key, max(k, int(unseen.sum())))


def budget_fraction(ctx: EpochContext, anneal: float) -> float:
    """The budget-sized keep fraction: as many samples as the rest of the selection phase can train ``RERANKS``
    times over, between ``MIN_FRACTION`` and all of them.

    ``ctx.affordable`` samples fit in the rest of the window; the part before the final ``anneal`` phase is
    ``(1 - anneal - progress) / (1 - progress)`` of it. A short budget thus gets a small subset of the most
    informative samples, re-ranked several times while they are still being learnt; a long one keeps (nearly) all
    data, where uniform training is hard to beat. Before throughput is measured the answer is all data.
    """
    if ctx.affordable is None or ctx.progress >= 1.0:
        return 1.0
    selection_share = max(0.0, 1.0 - anneal - ctx.progress) / (1.0 - ctx.progress)
    fraction = ctx.affordable * selection_share / (RERANKS * ctx.scores.n)
    return min(1.0, max(MIN_FRACTION, fraction))


def uniform(ctx: EpochContext) -> torch.Tensor:
    """One uniform draw per sample from the run's order generator (a CPU generator whose state the checkpoint
    saves, so subsets are reproducible and resumable), moved to the scores' device."""
    return torch.rand(ctx.scores.n, generator=ctx.generator).to(ctx.scores.last.device, non_blocking=True)


def top_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` highest entries of ``score`` (``torch.topk``: O(n log k), on the scores' device)."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask[torch.topk(score, k, sorted=False).indices] = True
    return mask
