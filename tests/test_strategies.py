"""Selection strategies: hand-made score tables, the noisy-label filter, short end-to-end runs and bad input.

The unit tests build :class:`EpochContext` objects by hand, so every decision is checked exactly and without timing.
Only the end-to-end runs use real time; they check that what the summary reports is consistent, not accuracy.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import torch.nn.functional as F

from timebudget import config as config_module, data, sampler
from timebudget.config import Config
from timebudget.errors import TimebudgetError
from timebudget.scores import ScoreTable
from timebudget.strategies import STRATEGIES, EpochContext, EpochPlan, Strategy, build, find_copies, noisy
from timebudget.strategies import importance, infobatch
from timebudget.strategies import dedup as dedup_strategy
from timebudget.strategies.dedup import Deduplicate
from timebudget.strategies.base import MIN_FRACTION, RERANKS, budget_fraction
from timebudget.strategies.selective import REFRESH_SHARE, STALE_EPOCHS
from timebudget.strategies import selective_backprop
from timebudget.trainer import train

from conftest import run_timebudget

SCORED = ("infobatch", "hard", "curriculum", "selective")
N = 20


def table(losses: torch.Tensor, step: int = 0) -> ScoreTable:
    """A score table whose last and average losses both equal ``losses`` (one measurement each)."""
    scores = ScoreTable(len(losses))
    scores.record(torch.arange(len(losses)), losses, step)
    return scores


def ranked_losses(n: int = N) -> torch.Tensor:
    """Distinct losses in a scrambled order, so position and rank differ."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(1)).float() / n


def context(scores: ScoreTable, progress: float = 0.5, epoch: int = 3, affordable: float | None = None,
            seed: int = 0) -> EpochContext:
    return EpochContext(epoch, progress, scores, torch.Generator().manual_seed(seed), affordable)


def strategy(name: str, **fields: object) -> Strategy:
    """Strategy ``name`` without near-duplicate sampling (its own tests are in ``test_dedup.py``)."""
    return build(Config(seconds=100, strategy=name, **{"dedup": "false", **fields}), "classification")


def check_mask(plan: EpochPlan, n: int) -> torch.Tensor:
    """A plan's mask is a bool CPU tensor over all positions; returns the kept positions."""
    assert plan.mask is not None
    assert plan.mask.dtype == torch.bool and plan.mask.shape == (n,) and plan.mask.device.type == "cpu"
    return plan.mask.nonzero().flatten()


# --- hand-made score tables -----------------------------------------------------------------------------------------
def test_registry_has_every_strategy() -> None:
    assert set(STRATEGIES) == {"full", "random", "infobatch", "hard", "curriculum", "selective", "importance",
                               "selective-backprop"}
    assert tuple(STRATEGIES) == config_module.STRATEGIES  # the names config validates against
    # the default: infobatch under the automatic noise filter, under near-duplicate sampling
    default = build(Config(seconds=1), "classification")
    assert isinstance(default, Deduplicate) and isinstance(default.inner, noisy.NoisyFilter)
    assert (default.name, default.inner.auto, default.inner.inner.name) == ("infobatch+filter_noisy", True, "infobatch")
    assert build(Config(seconds=1, strategy="full"), "classification").plan(context(table(ranked_losses()))) \
        == EpochPlan()


def test_hard_keeps_the_highest_scores() -> None:
    losses = ranked_losses()
    plan = strategy("hard", keep_fraction=0.25).plan(context(table(losses)))
    kept = check_mask(plan, N)
    assert set(kept.tolist()) == set(losses.topk(5).indices.tolist())
    assert plan.weights is None and plan.phase == "select"


def test_curriculum_grows_from_the_easiest_to_all() -> None:
    losses = ranked_losses()
    curriculum = strategy("curriculum", keep_fraction=0.25, select_warmup=0.1, anneal=0.1)
    first = check_mask(curriculum.plan(context(table(losses), progress=0.1)), N)
    assert set(first.tolist()) == set((-losses).topk(5).indices.tolist())
    middle = check_mask(curriculum.plan(context(table(losses), progress=0.5)), N)
    assert set(first.tolist()) < set(middle.tolist()) == set((-losses).topk(len(middle)).indices.tolist())
    assert curriculum.plan(context(table(losses), progress=0.89)).mask is None  # grown to all data at 1 - anneal


def test_infobatch_prunes_only_below_mean_and_reweights_the_kept_ones() -> None:
    losses = ranked_losses()
    below = losses < losses.mean()
    counts = torch.zeros(N)
    for seed in range(400):
        plan = strategy("infobatch").plan(context(table(losses), seed=seed))
        kept = plan.mask
        assert kept is not None and plan.weights is not None
        assert bool(kept[~below].all())  # every above-mean sample is kept, with weight 1
        assert torch.equal(plan.weights[~below], torch.ones(int((~below).sum())))
        assert torch.allclose(plan.weights[below & kept], torch.tensor(2.0))  # 1 / (1 - r), r = 0.5
        counts += kept
    assert counts[below].mean() / 400 == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("passes, prunes", [(7.2, False), (8.8, True), (0.5, False)])
def test_infobatch_trains_all_data_when_the_window_affords_few_passes(passes: float, prunes: bool) -> None:
    """At progress 0.5 the rest of the window affords ``passes / 2`` passes: the whole window ``passes``. The
    default threshold is 8 passes; 0 prunes at any budget, as the paper."""
    ctx = context(table(ranked_losses()), progress=0.5, affordable=passes / 2 * N)
    assert infobatch.planned_passes(ctx) == pytest.approx(passes)
    plan = strategy("infobatch", filter_noisy=False).plan(ctx)
    assert plan.phase == "select" and (plan.mask is not None) == prunes and (plan.weights is not None) == prunes
    assert strategy("infobatch", filter_noisy=False, prune_min_passes=0).plan(ctx).mask is not None
    regression = build(Config(seconds=100, strategy="infobatch", dedup="false"), "regression")  # never prunes ...
    assert regression.plan(ctx).mask is None and regression.plan(ctx).phase == "select"
    paper = build(Config(seconds=100, strategy="infobatch", prune_min_passes=0, dedup="false"), "regression")
    assert paper.plan(ctx).mask is not None  # ... unless asked for the paper's rule
    assert infobatch.planned_passes(context(table(ranked_losses()))) == math.inf  # throughput unknown: paper's rule


@pytest.mark.parametrize("name", ["infobatch", "selective"])
def test_weights_give_an_unbiased_expected_gradient(name: str) -> None:
    """E[kept_i * w_i] = 1 for every sample, so an epoch's expected summed gradient is a full pass's."""
    n, draws = 200, 3000
    scores = table(torch.rand(n, generator=torch.Generator().manual_seed(2)))
    chooser = strategy(name, keep_fraction=0.6)
    grads = torch.randn(n, 3, generator=torch.Generator().manual_seed(3))
    total = torch.zeros(n)
    for seed in range(draws):
        plan = chooser.plan(context(scores, seed=seed))
        assert plan.mask is not None and plan.weights is not None
        total += plan.mask * plan.weights
    expected = total / draws
    assert expected.sub(1).abs().max() < 0.15
    assert torch.allclose(expected @ grads, grads.sum(0), atol=1.0)  # about 3 standard errors


def test_selective_keeps_the_top_for_certain_and_weights_the_draw_by_inverse_probability() -> None:
    n = 100
    losses = ranked_losses(n)
    plan = strategy("selective", keep_fraction=0.4).plan(context(table(losses)))
    kept = check_mask(plan, n)
    top = set(losses.topk(20).indices.tolist())
    assert len(kept) == 40 and top <= set(kept.tolist())
    assert plan.weights is not None
    drawn = sorted(set(kept.tolist()) - top)
    assert torch.allclose(plan.weights[drawn], torch.tensor((n - 20) / 20))  # 1 / p, p = 20 drawn of 80
    assert torch.equal(plan.weights[sorted(top)], torch.ones(20))


def test_selective_refreshes_stale_scores_outside_the_subset() -> None:
    n = 200
    scores = table(torch.rand(n, generator=torch.Generator().manual_seed(4)), step=0)
    recent = torch.arange(150)
    chooser = strategy("selective", keep_fraction=0.5, filter_noisy=False)  # random losses: no noise to judge
    for epoch in range(STALE_EPOCHS):  # samples 150..199 are never measured again
        scores.record(recent, torch.rand(150), step=10 * (epoch + 1))
        plan = chooser.plan(context(scores, epoch=epoch + 1, seed=epoch))
    assert plan.refresh is not None and plan.mask is not None
    refresh = plan.refresh.tolist()
    assert 0 < len(refresh) <= math.ceil(REFRESH_SHARE * STALE_EPOCHS * int(plan.mask.sum()))
    assert all(i >= 150 and not plan.mask[i] for i in refresh)


@pytest.mark.parametrize("name", ["random", *SCORED])
def test_subset_is_a_mask_over_the_shuffle(name: str) -> None:
    """The order is the seed's shuffle restricted to the mask: no repeats, nothing outside the mask, same order."""
    n = 100
    plan = strategy(name, keep_fraction=0.5).plan(context(table(ranked_losses(n))))
    kept = check_mask(plan, n)
    order = sampler.epoch_order(n, torch.Generator().manual_seed(7), plan.mask)
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(7))
    assert len(order) == len(set(order.tolist())) == len(kept)
    assert set(order.tolist()) == set(kept.tolist())
    assert torch.equal(order, shuffle[plan.mask[shuffle]])


@pytest.mark.parametrize("name", ["random", *SCORED])
def test_subsets_are_whole_batches(name: str) -> None:
    """Every batch of a subset epoch has one shape (cuDNN autotuning and compiled models see no new sizes)."""
    n = 1000
    chooser = strategy(name, keep_fraction=0.3, batch_size=64)
    for seed, progress in enumerate((0.2, 0.4, 0.6)):
        kept = check_mask(chooser.plan(context(table(ranked_losses(n)), progress=progress, seed=seed)), n)
        assert len(kept) % 64 == 0


@pytest.mark.parametrize("name", SCORED)
def test_full_data_in_warmup_and_anneal(name: str) -> None:
    scores = table(ranked_losses())
    chooser = strategy(name, keep_fraction=0.5, select_warmup=0.2, anneal=0.125)
    for ctx, phase in ((context(scores, epoch=0, progress=0.0), "warmup"),
                       (context(scores, epoch=5, progress=0.9), "anneal")):
        plan = chooser.plan(ctx)
        assert plan.mask is None and plan.weights is None and plan.phase == phase
    if name != "infobatch":  # InfoBatch prunes from the second epoch, as in the paper
        assert chooser.plan(context(scores, epoch=2, progress=0.15)).mask is None


@pytest.mark.parametrize("name", SCORED)
def test_no_sample_is_pruned_before_it_has_a_score(name: str) -> None:
    n = 100
    scores = ScoreTable(n)
    measured = torch.arange(0, n, 3)
    scores.record(measured, torch.rand(len(measured)), 1)
    unseen = ~scores.seen
    for seed in range(20):
        plan = strategy(name, keep_fraction=0.3).plan(context(scores, seed=seed))
        assert plan.mask is None or bool(plan.mask[unseen].all())


def test_random_covers_all_samples_before_repeating() -> None:
    n, k = 100, 30
    rs2 = strategy("random", keep_fraction=k / n)
    scores = ScoreTable(n)  # RS2 never reads scores
    counts = torch.zeros(n, dtype=torch.long)
    for epoch in range(10):
        kept = check_mask(rs2.plan(context(scores, epoch=epoch, seed=epoch)), n)
        assert len(kept) == k
        behind = counts == counts.min()  # not yet trained in the current cycle
        if bool((~behind[kept]).any()):  # a repeat: only in the epoch that completes the cycle, taking all the rest
            assert bool(torch.isin(behind.nonzero().flatten(), kept).all())
        counts[kept] += 1
        assert int(counts.max() - counts.min()) <= 1
    assert int(counts.sum()) == 10 * k


def test_budget_fraction_rule() -> None:
    scores = ScoreTable(1000)
    assert budget_fraction(context(scores, affordable=None), anneal=0.1) == 1.0
    assert budget_fraction(context(scores, progress=0.2, affordable=1e6), anneal=0.1) == 1.0
    assert budget_fraction(context(scores, progress=0.85, affordable=2000), anneal=0.1) == MIN_FRACTION
    ctx = context(scores, progress=0.5, affordable=3000)  # the selection phase is 0.4 / 0.5 of the rest
    assert budget_fraction(ctx, anneal=0.1) == pytest.approx(3000 * 0.8 / (RERANKS * 1000))
    hard = strategy("hard").plan(context(table(ranked_losses(1000)), progress=0.85, affordable=2000))
    assert len(check_mask(hard, 1000)) == round(MIN_FRACTION * 1000)


# --- the noisy-label filter -----------------------------------------------------------------------------------------
def test_gmm_filter_finds_planted_mislabelled_samples() -> None:
    n = 2000
    g = torch.Generator().manual_seed(5)
    planted = torch.randperm(n, generator=g)[:200]
    losses = torch.empty(n).exponential_(10.0, generator=g)  # learnt samples: small losses
    losses[planted] = 2.5 + 0.5 * torch.randn(200, generator=g)  # mislabelled ones stay high
    scores = ScoreTable(n)
    for step in range(noisy.WARM_PASSES):
        scores.record(torch.arange(n), losses, step)
    # fits spaced by MIN_GAP, not cost
    filtered = build(Config(seconds=1e6, strategy="full", dedup="false", filter_noisy=True), "classification")
    first = filtered.plan(context(scores, progress=0.3))
    assert first.mask is None  # one fit is not persistent enough
    kept = set(check_mask(filtered.plan(context(scores, progress=0.5)), n).tolist())
    left_out = set(range(n)) - kept
    found = left_out & set(planted.tolist())
    assert len(found) >= 0.95 * 200 and len(found) >= 0.9 * len(left_out)


def test_filter_never_leaves_out_an_unscored_sample() -> None:
    n = 2000
    losses, planted = planted_losses(n)
    unscored = planted[:20]  # among the would-be suspects, and never measured
    scored = torch.ones(n, dtype=torch.bool)
    scored[unscored] = False
    scores = ScoreTable(n)
    for step in range(noisy.WARM_PASSES + 1):
        scores.record(scored.nonzero().flatten(), losses[scored], step)
    filtered = build(Config(seconds=1e6, strategy="full", dedup="false", filter_noisy=True), "classification", 10)
    filtered.plan(context(scores, progress=0.3))
    kept = set(check_mask(filtered.plan(context(scores, progress=0.5)), n).tolist())
    assert set(unscored.tolist()) <= kept and len(set(planted[20:].tolist()) - kept) >= 0.95 * 180


def test_filter_waits_for_the_warmup_passes() -> None:
    n = 500
    scores = table(torch.rand(n))
    filtered = strategy("selective", filter_noisy=True)
    for progress in (0.3, 0.5, 0.7):
        filtered.plan(context(scores, progress=progress))
    assert filtered.excluded is None  # one pass trained: no fit yet


def test_filter_refuses_regression() -> None:
    with pytest.raises(TimebudgetError, match="filter_noisy needs a classification task"):
        build(Config(seconds=1, strategy="selective", filter_noisy=True), "regression")


def blobs_training(rate: float, seed: int = 0, n: int = 2000, classes: int = 10, epochs: int = 12) -> noisy.NoisyFilter:
    """Train a small MLP on separable Gaussian blobs with ``rate`` of the labels flipped, recording per-sample losses
    in a score table, with the default (auto) filter planning every epoch; returns the filter."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, 20, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, 20, generator=g)
    flip = torch.randperm(n, generator=g)[: round(rate * n)]
    y[flip] = (y[flip] + torch.randint(1, classes, (len(flip),), generator=g)) % classes
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scores = ScoreTable(n)
    # long budget: fits spaced by MIN_GAP, not cost
    auto = build(Config(seconds=1e6, strategy="full", dedup="false"), "classification", classes)
    assert isinstance(auto, noisy.NoisyFilter) and auto.auto
    for epoch in range(epochs):
        auto.plan(context(scores, progress=epoch / epochs, epoch=epoch, seed=epoch))
        for idx in torch.randperm(n, generator=g).split(64):
            losses = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
            optimizer.zero_grad()
            losses.mean().backward()
            optimizer.step()
            scores.record(idx, losses.detach(), epoch)
    return auto


def test_auto_filter_turns_on_for_flipped_labels_and_stays_off_on_clean_data() -> None:
    flipped, clean = blobs_training(0.3), blobs_training(0.0)
    assert flipped.noisy and not clean.noisy
    assert flipped.chance == pytest.approx(math.log(10))
    # wide margins around the share threshold, so the verdicts do not hang on a seed
    assert max(flipped.checks) > 3 * noisy.MIN_SHARE
    assert max(clean.checks) < noisy.MIN_SHARE / 3
    assert len(clean.checks) >= noisy.CONTRADICTED_PLANS  # it did look, several times


def passes(scores: ScoreTable, losses: torch.Tensor, start: int, count: int) -> int:
    """Record ``count`` passes of ``losses`` over every sample, at steps ``start``, ``start + 1``, ...; returns the
    next step."""
    for step in range(start, start + count):
        scores.record(torch.arange(len(losses)), losses, step)
    return start + count


def planted_losses(n: int = 2000, planted: int = 200, high: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Small losses for most samples and ``high`` ones (above the chance loss ln 10) for ``planted`` of them."""
    g = torch.Generator().manual_seed(5)
    index = torch.randperm(n, generator=g)[:planted]
    losses = torch.empty(n).exponential_(10.0, generator=g)
    losses[index] = high + 0.5 * torch.randn(planted, generator=g)
    return losses, index


def test_auto_filter_leaves_nothing_out_until_it_decides() -> None:
    n = 2000
    losses, planted = planted_losses(n)
    scores = ScoreTable(n)
    step = passes(scores, losses, 0, noisy.WARM_PASSES)
    # long budget: fits spaced by MIN_GAP, not cost
    auto = build(Config(seconds=1e6, strategy="full", dedup="false"), "classification", 10)
    for plan_no in range(1, noisy.CONTRADICTED_PLANS):  # contradicted at 1, 2 plans in a row: not yet
        assert auto.plan(context(scores, progress=0.1 * plan_no)).mask is None and not auto.noisy
        step = passes(scores, losses, step, 1)
    plan = auto.plan(context(scores, progress=0.5))
    assert auto.noisy and plan.phase == "full+filtered"
    left_out = set(range(n)) - set(check_mask(plan, n).tolist())
    assert len(left_out & set(planted.tolist())) >= 0.95 * len(planted)
    assert len(left_out - set(planted.tolist())) <= 10


def test_auto_filter_stays_off_when_high_losses_pass() -> None:
    """Samples above the chance loss at one or two plans that are then learnt (a minority class learnt late, hard
    samples early in training) are not label noise: the filter stays off and leaves nothing out."""
    n = 2000
    losses, planted = planted_losses(n)
    learnt = losses.clone()
    learnt[planted] = 0.5
    scores = ScoreTable(n)
    step = passes(scores, losses, 0, noisy.WARM_PASSES)
    auto = build(Config(seconds=1e6, strategy="full", dedup="false"), "classification", 10)
    for plan_no in range(1, 12):
        plan = auto.plan(context(scores, progress=0.05 * plan_no))
        assert plan.mask is None
        step = passes(scores, losses if plan_no < noisy.CONTRADICTED_PLANS - 1 else learnt, step, 1)
    assert not auto.noisy and max(auto.checks) == 0.0


def test_auto_filter_counts_only_remeasured_samples() -> None:
    """A sample the wrapped strategy left out keeps its old loss: planning again without measuring it must not count
    it as contradicted once more."""
    n = 2000
    losses, _ = planted_losses(n)
    scores = ScoreTable(n)
    passes(scores, losses, 0, noisy.WARM_PASSES)
    auto = build(Config(seconds=1e6, strategy="full", dedup="false"), "classification", 10)
    for plan_no in range(1, 6):  # the same, stale scores at every plan
        assert auto.plan(context(scores, progress=0.1 * plan_no)).mask is None
    assert not auto.noisy and auto.contradicted is not None and int(auto.contradicted.max()) == 1


def test_auto_filter_measures_the_chance_loss_without_the_class_count() -> None:
    scores = ScoreTable(4)
    scores.record(torch.tensor([2, 3]), torch.tensor([2.0, 2.2]), 0)  # the first batch: the untrained model
    scores.record(torch.tensor([0, 1]), torch.tensor([0.5, 0.7]), 1)
    auto = build(Config(seconds=1e6, strategy="full", dedup="false"), "classification")
    auto.plan(context(scores, progress=0.1))
    assert auto.chance == pytest.approx(2.1)
    known = build(Config(seconds=1e6, strategy="full", dedup="false"), "classification", 100)
    assert known.chance == pytest.approx(math.log(100))


def test_auto_filter_is_off_for_regression_and_forced_filter_refuses_it() -> None:
    assert build(Config(seconds=1, strategy="full"), "regression").name == "full"
    with pytest.raises(TimebudgetError, match="unknown filter_noisy 'maybe'; allowed: auto, true, false"):
        Config(seconds=1, filter_noisy="maybe").validate()
    assert Config(seconds=1, filter_noisy=True).validate().filter_noisy == "true"
    assert config_module.apply({"seconds": 1, "filter_noisy": "auto"}).validate().filter_noisy == "auto"


# --- importance sampling --------------------------------------------------------------------------------------------
def test_systematic_sampling_draws_exactly_k_with_the_given_probabilities() -> None:
    pi = sampler.inclusion_probabilities(importance.sampling_distribution(torch.rand(12) ** 3, 0.2), 5)
    assert float(pi.sum()) == pytest.approx(5.0) and float(pi.max()) <= 1.0 + 1e-12
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sampler.systematic_sample(pi, g) for _ in range(20_000)])
    assert bool((draws.sum(1) == 5).all())
    assert torch.allclose(draws.double().mean(0), pi, atol=0.015)


def test_importance_weights_keep_the_gradient_unbiased_on_a_tiny_problem() -> None:
    """The mean weighted loss over an epoch's kept samples has, in expectation over the draws, the gradient of the
    mean loss over all samples: checked with autograd on a tiny logistic regression, within four standard errors."""
    g = torch.Generator().manual_seed(3)
    n, k = 16, 6
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)
    w = torch.randn(3, 2, generator=g, requires_grad=True)

    def gradient(mask: torch.Tensor | None, weights: torch.Tensor | None) -> torch.Tensor:
        losses = F.cross_entropy(x @ w, y, reduction="none")
        loss = losses.mean() if mask is None else (losses * weights)[mask].mean()
        return torch.autograd.grad(loss, w)[0].flatten()

    with torch.no_grad():
        losses = F.cross_entropy(x @ w, y, reduction="none")
    seen = torch.ones(n, dtype=torch.bool)
    seen[[2, 9]] = False  # unscored samples: always kept
    score = importance.gradient_bound(losses, "cross_entropy")
    draws = []
    for _ in range(4000):
        mask, weights, tau = importance.importance_plan(score, seen, k, g, tau_min=1.0)
        assert mask is not None and weights is not None and int(mask.sum()) == k
        assert bool(mask[~seen].all())
        draws.append(gradient(mask, weights))
    estimates = torch.stack(draws)
    error = (estimates.mean(0) - gradient(None, None)).abs()
    standard_error = estimates.std(0) / math.sqrt(len(draws))
    assert bool((error <= 4 * standard_error + 1e-6).all()), (error, standard_error)


@pytest.mark.parametrize("seed", range(5))
def test_importance_never_leaves_out_an_unscored_sample(seed: int) -> None:
    n = 200
    scores = ScoreTable(n)
    g = torch.Generator().manual_seed(seed)
    scored = torch.randperm(n, generator=g)[:150]
    losses = torch.full((150,), 1e-3)
    losses[torch.randperm(150, generator=g)[:20]] = 3.0  # most samples learnt, a few not: importance pays
    scores.record(scored, losses, 0)
    strategy_ = strategy("importance", batch_size=10, filter_noisy="false")
    plan = strategy_.plan(context(scores, seed=seed))
    assert plan.phase == "importance" and strategy_.tau >= importance.TAU_MIN
    kept = check_mask(plan, n)
    assert bool(torch.isin((~scores.seen).nonzero().flatten(), kept).all())
    assert len(kept) == importance.KEEP * n


def test_importance_falls_back_to_uniform_when_it_does_not_pay() -> None:
    even = strategy("importance", filter_noisy="false")
    plan = even.plan(context(table(torch.full((N,), 0.7))))  # equal scores: tau = 1
    assert (plan.mask, plan.weights, plan.phase) == (None, None, "uniform") and even.tau == pytest.approx(1.0)
    mild = strategy("importance", filter_noisy="false")
    plan = mild.plan(context(table(0.5 + 0.1 * ranked_losses())))  # scores differ, but too little to pay
    assert plan.mask is None and 1.0 < mild.tau < importance.TAU_MIN
    # |grad| is constant for L1
    l1 = build(Config(seconds=100, strategy="importance", loss="l1", dedup="false"), "regression")
    assert l1.plan(context(table(ranked_losses()))).phase == "uniform"
    assert strategy("importance").plan(context(table(ranked_losses()), epoch=0)).phase == "warmup"


# --- end to end -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def warm() -> Iterator[None]:
    """One torch thread (on a shared machine two OpenMP threads can stall each other for a third of a second per
    step), and digits loaded once, so the first timed run does not pay the scikit-learn import inside its budget."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data.load("digits")
    yield
    torch.set_num_threads(threads)


def check_summary(summary: dict, out: Path) -> None:
    n = summary["n_train"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in logged if r["event"] == "epoch"]  # each epoch's subset; the summary holds their tally
    assert [r["epoch"] for r in epochs] == list(range(summary["epochs"]))
    assert all(0 < r["kept"] <= n and r["kept_fraction"] == pytest.approx(r["kept"] / n) for r in epochs)
    fractions = [r["kept_fraction"] for r in epochs]
    phases = collections.Counter(r["phase"] for r in epochs)
    mean = pytest.approx(sum(fractions) / len(epochs))
    assert summary["subsets"] == {"epochs": len(epochs), "kept_fraction_mean": mean,
                                  "kept_fraction_min": min(fractions), "kept_fraction_max": max(fractions),
                                  "epochs_by_phase": dict(phases)}
    assert summary["samples_skipped"] == sum(n - r["kept"] for r in epochs)
    assert summary["samples_trained"] <= sum(r["kept"] for r in epochs)
    assert 0 < summary["fraction_seen"] <= 1 and 0 <= summary["seconds_scoring"] < summary["budget_s"]
    assert json.loads((out / "summary.json").read_text())["samples_skipped"] == summary["samples_skipped"]


# --- Selective-Backprop ---------------------------------------------------------------------------------------------
def test_selective_backprop_keeps_by_the_loss_percentile() -> None:
    history = torch.arange(1, 11).float() / 10  # 0.1 ... 1.0
    losses = torch.tensor([0.1, 0.5, 1.0, 0.55])
    draws = torch.tensor([0.05, 0.6, 0.99, 0.45])
    none = torch.zeros(4, dtype=torch.bool)
    assert selective_backprop.percentile(history, losses).tolist() == pytest.approx([0.1, 0.5, 1.0, 0.5])
    assert selective_backprop.keep_mask(history, losses, draws, none, beta=1).tolist() == [True, False, True, True]
    # beta 2: probabilities 0.01, 0.25, 1, 0.25
    assert selective_backprop.keep_mask(history, losses, draws, none, beta=2).tolist() == [False, False, True, False]


def test_selective_backprop_keeps_unscored_and_non_finite_losses() -> None:
    history = torch.arange(1, 11).float() / 10
    losses = torch.tensor([0.1, 0.1, float("nan")])
    draws = torch.ones(3)  # a draw of 1 keeps nothing by the rule
    unscored = torch.tensor([True, False, False])
    assert selective_backprop.keep_mask(history, losses, draws, unscored).tolist() == [True, False, True]


class FakeRun:
    """A step and a forward with fixed costs on a fake clock; a sample's input is ``(index, loss)`` and its loss the
    second feature. The step records what it back-propagates, the forward what it scored."""

    def __init__(self, step_s: float, forward_s: float) -> None:
        self.t, self.step_s, self.forward_s = 0.0, step_s, forward_s
        self.stepped: list[torch.Tensor] = []
        self.forwarded: list[torch.Tensor] = []

    def now(self) -> float:
        return self.t

    def step(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        self.t += self.step_s
        self.stepped.append(x[:, 0].long())
        return x[:, 1].clone()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.t += self.forward_s
        self.forwarded.append(x[:, 0].long())
        return x[:, 1].clone()


def run_backprop(run: FakeRun, scores: ScoreTable, calls: int, batch: int = 8) -> Strategy:
    """``calls`` training steps of Selective-Backprop on random batches, then one batch of very high losses (all kept),
    which pushes every sample still queued into a step."""
    sb = strategy("selective-backprop", filter_noisy="false", batch_size=batch)
    sb.now = run.now
    assert sb.plan(context(scores, progress=0.5)).phase == "backprop"
    own = sb.backprop(run.step, run.forward, batch)
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(batch, dtype=torch.long)
    for _ in range(calls):
        index = torch.randperm(scores.n, generator=g)[:batch]
        losses = own(torch.stack([index.float(), scores.last[index]], 1), y, None, index)
        assert losses.shape == (batch,)
    index = torch.arange(scores.n - batch, scores.n)
    own(torch.stack([index.float(), torch.full((batch,), 1e3)], 1), y, None, index)
    return sb


def test_selective_backprop_backpropagates_every_unscored_sample_and_full_batches() -> None:
    n, calls = 400, 200
    scores = table(torch.rand(n, generator=torch.Generator().manual_seed(3)))
    scores.count[:40] = 0  # never measured
    run = FakeRun(step_s=1.0, forward_s=0.1)
    sb = run_backprop(run, scores, calls)
    assert not sb.off and sb.summary()["speedup"] > selective_backprop.MIN_SPEEDUP
    assert all(len(b) == 8 for b in run.stepped)  # every optimizer step has the run's batch size
    probe = selective_backprop.PROBE  # the timed ordinary steps come first
    selected = torch.cat(run.stepped[probe:])
    forwarded = torch.cat(run.forwarded[:-1])
    assert len(forwarded) == (calls - probe) * 8
    assert len(selected) < 0.75 * len(forwarded)  # low losses were skipped ...
    unscored = set(forwarded.tolist()) & set(range(40))
    assert unscored and unscored <= set(selected.tolist())  # ... never an unscored one
    scored_kept = selected[(selected >= 40) & (selected < n - 8)]
    assert float(scores.last[scored_kept].mean()) > float(scores.last[forwarded[forwarded >= 40]].mean()) + 0.1


def test_wrappers_pass_on_the_inner_strategys_own_step_and_counts() -> None:
    """The noise filter and the near-duplicate sampling around Selective-Backprop: the loop gets its step through both,
    and ``summary.json`` its counts (plus the sampling's decision)."""
    config = Config(seconds=100, strategy="selective-backprop", filter_noisy="true", batch_size=8)
    inputs = torch.rand(200, 300, generator=torch.Generator().manual_seed(0))
    wrapped = build(config, "classification", 10, find_copies(config, inputs))
    assert isinstance(wrapped, Deduplicate) and isinstance(wrapped.inner, noisy.NoisyFilter)
    sb = wrapped.inner.inner
    run = FakeRun(step_s=1.0, forward_s=0.1)
    sb.now = run.now
    own = wrapped.backprop(run.step, run.forward, 8)
    assert own is not None and build(Config(seconds=100, strategy="full", filter_noisy="true"), "classification",
                                     10).backprop(run.step, run.forward, 8) is None
    index = torch.arange(8)
    own(torch.stack([index.float(), torch.full((8,), 1e3)], 1), torch.zeros(8, dtype=torch.long), None, index)
    assert sb.backprop_samples > 0 and wrapped.inner.summary() == sb.summary()
    assert wrapped.summary() == {**sb.summary(), "dedup": wrapped.copies.summary()}


def test_selective_backprop_falls_back_to_uniform_when_a_candidate_costs_as_much_as_a_step() -> None:
    scores = table(torch.rand(200, generator=torch.Generator().manual_seed(3)))
    run = FakeRun(step_s=1.0, forward_s=1.0)  # the forward costs a whole step: skipping backward saves nothing
    calls, probe = 100, selective_backprop.PROBE
    sb = run_backprop(run, scores, calls)
    assert sb.off and sb.summary()["switched_off"] and sb.summary()["speedup"] < 1
    assert len(run.forwarded) == probe  # only the timed selective steps forwarded separately ...
    assert len(run.stepped) >= calls + 1 - probe  # ... every later call was one ordinary step on its whole batch
    assert run.stepped[-1].tolist() == list(range(192, 200))
    assert sb.plan(context(scores, progress=0.5)).phase == "uniform"
    assert sb.plan(context(scores, progress=0.05)).phase == "warmup"
    assert sb.plan(context(scores, progress=0.95)).phase == "anneal"


@pytest.mark.parametrize("name,fields", [(name, {}) for name in STRATEGIES] + [("selective", {"filter_noisy": True})])
def test_end_to_end_run(name: str, fields: dict, tmp_path: Path, warm: None) -> None:
    result = train(Config(seconds=3, strategy=name, quiet=True, out=str(tmp_path / "run"), **fields))
    summary = result.summary
    assert summary["strategy"] == name
    check_summary(summary, tmp_path / "run")
    if name == "full":
        assert summary["samples_skipped"] == 0


def test_cli_run_with_selective(tmp_path: Path) -> None:
    done = run_timebudget("train", "--seconds", "8", "--strategy", "selective", "--quiet", "--out", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["strategy"] == "selective"
    check_summary(summary, tmp_path / "r")


# --- near-duplicate sampling (the detection itself: test_dedup.py) ---------------------------------------------------
def planted_copies(items: int, copies: list[int], features: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``items`` distinct random items, item i copied ``copies[i]`` times with a little noise; and each row's
    item."""
    g = torch.Generator().manual_seed(0)
    item = torch.repeat_interleave(torch.arange(items), torch.tensor(copies))
    return torch.rand(items, features, generator=g)[item] + 0.02 * torch.randn(len(item), features, generator=g), item


def test_dedup_draws_about_one_copy_of_each_item_per_draw() -> None:
    counts = torch.tensor([40] * 40 + [1] * 60)  # one item copied 40 times, 60 items once: 61 items
    picks = torch.stack([dedup_strategy.draws(1.0 / counts, 61, 1, torch.Generator().manual_seed(s))
                         for s in range(300)]).float()
    assert bool((picks.sum(1) == 61).all()) and picks.max() == 1  # one draw: without replacement
    assert bool((picks[:, :40].sum(1) == 1).all()) and bool((picks[:, 40:] == 1).all())  # each item exactly once
    assert picks[:, :40].sum(0).min() > 0  # and a different copy each time (a uniform draw: the item 24 times)
    rounds = dedup_strategy.draws(1.0 / counts, 61, 3, torch.Generator().manual_seed(0))
    assert int(rounds.sum()) == 183 and int(rounds.max()) == 3  # three draws: a row up to three times


def test_dedup_draws_only_among_what_the_wrapped_strategy_kept() -> None:
    counts = torch.tensor([4] * 40 + [1] * 20)
    allowed = torch.arange(60) % 2 == 0
    times = dedup_strategy.draws(allowed / counts, 10, 4, torch.Generator().manual_seed(0))
    assert int(times.sum()) == 40 and not bool(times[~allowed].any())


def test_dedup_wraps_the_plan_in_draws_of_whole_batches_keeping_its_weights() -> None:
    x, item = planted_copies(40, [10] * 8 + [1] * 32)  # 112 rows, 40 items
    config = Config(seconds=100, strategy="infobatch", filter_noisy="false", batch_size=8, prune_min_passes=0)
    wrapped = build(config, "classification", 10, find_copies(config, x))
    assert isinstance(wrapped, Deduplicate) and isinstance(wrapped.inner, infobatch.InfoBatch)
    scores = table(torch.rand(112, generator=torch.Generator().manual_seed(1)))
    plan = wrapped.plan(context(scores, progress=0.5))
    inner = wrapped.inner.plan(context(scores, progress=0.5))  # the same draw of the same generator seed
    assert plan.phase == "select+dedup" and plan.mask is None and plan.repeats is not None
    assert not bool(plan.repeats[~inner.mask].any())  # only what InfoBatch kept ...
    assert torch.equal(plan.weights, inner.weights)  # ... with its weights
    assert plan.kept(112) % 8 == 0 and plan.kept(112) <= inner.kept(112)
    per_item = torch.zeros(40).index_add_(0, item, plan.repeats.float())
    assert per_item[:8].mean() < 3 * per_item[8:].mean()  # a copied item is not trained 10x as often
    stats = wrapped.summary()["dedup"]
    assert stats["active"] and stats["rows_with_copies"] == 80 and stats["largest_group"] == 10


def test_dedup_passes_the_plan_through_when_copies_are_rare_or_inputs_are_not_in_memory() -> None:
    distinct, _ = planted_copies(100, [1] * 100)
    for inputs, reason in ((distinct, "below 10%"), (None, "not in memory")):
        config = Config(seconds=100, strategy="random", filter_noisy="false")
        wrapped = build(config, "classification", 10, find_copies(config, inputs))
        plan = wrapped.plan(context(table(ranked_losses(100)), affordable=100.0))
        assert plan.repeats is None and plan.mask is not None and "dedup" not in plan.phase
        assert reason in wrapped.summary()["dedup"]["reason"] and not wrapped.summary()["dedup"]["active"]
    off = Config(seconds=100, dedup="false")
    assert find_copies(off, distinct).reason == "dedup: false"  # never looked at
    assert build(off, "classification", 10, find_copies(off, distinct)).name == "infobatch+filter_noisy"
    assert not isinstance(build(off, "classification", 10, find_copies(off, distinct)), Deduplicate)


def test_dedup_decision_survives_a_resume_and_an_older_checkpoint_trains_every_row(tmp_path: Path) -> None:
    x, _ = planted_copies(20, [5] * 20)
    config = Config(seconds=100, strategy="full", filter_noisy="false", batch_size=4)
    first = build(config, "classification", 10, find_copies(config, x))
    resumed_config = dataclasses.replace(config, resume=str(tmp_path))
    not_counted = find_copies(resumed_config, x)  # a resumed run does not count again: its checkpoint decides
    assert not_counted.counts is None and "resumed" in not_counted.reason
    resumed = build(resumed_config, "classification", 10, not_counted)
    torch.save(first.state_dict(), tmp_path / "state.pt")  # as a checkpoint holds it
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.summary()["dedup"] == first.summary()["dedup"]
    assert torch.equal(resumed.copies.counts, first.copies.counts)
    assert resumed.plan(context(table(ranked_losses(100)))).repeats is not None
    older = build(config, "classification", 10, find_copies(config, x))
    older.load_state_dict(first.inner.state_dict())  # what a checkpoint before the wrapper held
    assert older.plan(context(table(ranked_losses(100)))).repeats is None
    assert "without deduplication" in older.summary()["dedup"]["reason"]
    early = build(resumed_config, "classification", 10, not_counted)  # a checkpoint from before copies were counted
    early.load_state_dict({"inner": first.inner.state_dict(), "dedup": None})
    assert early.copies.counts is None and "had not counted" in early.copies.reason


def test_run_on_copied_data_trains_about_one_copy_of_each_item(tmp_path: Path, warm: None) -> None:
    x, item = planted_copies(60, [8] * 30 + [1] * 30, features=256)
    y = (item % 3).numpy()
    path = tmp_path / "copies.npz"
    np.savez(path, x_train=x.numpy(), y_train=y, x_test=x[:50].numpy(), y_test=y[:50])
    summaries = {}
    for mode in ("auto", "false"):
        out = tmp_path / mode
        summaries[mode] = train(Config(seconds=3, data=str(path), dedup=mode, quiet=True, out=str(out))).summary
        check_summary(summaries[mode], out)
    stats = summaries["auto"]["strategy_stats"]["dedup"]
    assert stats["active"] and stats["rows_with_copies"] == 240
    assert stats["saving"] == pytest.approx(1 - 60 / 270, abs=1e-4)
    assert all(phase.endswith("+dedup") for phase in summaries["auto"]["subsets"]["epochs_by_phase"])
    assert "dedup" not in summaries["false"]["strategy_stats"]
    assert not any("dedup" in phase for phase in summaries["false"]["subsets"]["epochs_by_phase"])


# --- bad input ------------------------------------------------------------------------------------------------------
def test_unknown_strategy(cli_main) -> None:
    with pytest.raises(TimebudgetError, match="unknown strategy 'fastest'; allowed: full, random"):
        Config(seconds=1, strategy="fastest").validate()
    cli_main("train", "--seconds", "100", "--strategy", "fastest").one_line_error("unknown strategy 'fastest'")


@pytest.mark.parametrize("fraction", [0.0, -0.2, 1.5, float("nan")])
def test_keep_fraction_outside_0_1(fraction: float, cli_main) -> None:
    with pytest.raises(TimebudgetError, match="keep_fraction must be in"):
        Config(seconds=1, keep_fraction=fraction).validate()
    cli_main("train", "--seconds", "100", "--set", f"keep_fraction={fraction}").one_line_error("keep_fraction")


def test_unknown_dedup_mode(cli_main) -> None:
    with pytest.raises(TimebudgetError, match="unknown dedup 'yes'; allowed: auto, true, false"):
        Config(seconds=1, dedup="yes").validate()
    cli_main("train", "--seconds", "100", "--set", "dedup=sometimes").one_line_error("unknown dedup 'sometimes'")


def test_keep_fraction_one_keeps_everything() -> None:
    Config(seconds=1, keep_fraction=1.0).validate()
    for name in ("random", "hard", "selective"):
        assert strategy(name, keep_fraction=1.0).plan(context(table(ranked_losses()))).mask is None


def test_filter_on_regression_data_is_refused_before_training(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    path = tmp_path / "reg.npz"
    np.savez(path, x_train=g.normal(size=(64, 4)).astype(np.float32), y_train=g.normal(size=64).astype(np.float32),
             x_test=g.normal(size=(16, 4)).astype(np.float32), y_test=g.normal(size=16).astype(np.float32))
    with pytest.raises(TimebudgetError, match="filter_noisy needs a classification task, this data is regression"):
        train(Config(seconds=30, data=str(path), filter_noisy=True, quiet=True, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_the_torch_mixture_fits_as_scikit_learn_does() -> None:
    """The filter's EM (no scikit-learn import inside the training window) finds the mixture scikit-learn finds with
    the same start, tolerance and variance floor, and the same high-loss samples."""
    from sklearn.mixture import GaussianMixture

    from timebudget.strategies.noisy import ashman_d, fit_mixture

    g = torch.Generator().manual_seed(0)
    x = torch.cat([0.15 + 0.08 * torch.randn(800, generator=g), 0.75 + 0.1 * torch.randn(200, generator=g)])
    x = x.clamp(0, 1).double()
    ours = fit_mixture(x)
    theirs = GaussianMixture(2, tol=1e-2, reg_covar=5e-4, means_init=[[0.0], [1.0]]).fit(x.numpy().reshape(-1, 1))
    assert torch.allclose(ours.means, torch.as_tensor(theirs.means_.ravel()), atol=0.01)
    assert torch.allclose(ours.weights, torch.as_tensor(theirs.weights_), atol=0.01)
    high = theirs.predict_proba(x.numpy().reshape(-1, 1))[:, int(theirs.means_.argmax())] > 0.5
    assert (ours.posterior_high(x) > 0.5).eq(torch.as_tensor(high)).float().mean() > 0.99
    assert ashman_d(ours) > 2.0


def test_infobatch_counts_its_passes_over_distinct_items_where_copies_were_counted() -> None:
    """Two passes over rows that hold each item ten times repeat every item twenty times: InfoBatch's few-pass gate
    (8 passes) then prunes, as it would in a 20-pass run; the same window over distinct rows trains all data."""
    copied, _ = planted_copies(20, [10] * 20)  # 200 rows, 20 items
    distinct, _ = planted_copies(200, [1] * 200)
    config = Config(seconds=100, strategy="infobatch", filter_noisy="false", batch_size=8, dedup="true")
    losses = torch.rand(200, generator=torch.Generator().manual_seed(2))
    ctx = context(table(losses), progress=0.5, affordable=1.0 * 200)  # the whole window: two passes over the rows
    assert infobatch.planned_passes(ctx) == pytest.approx(2.0)
    wrapped = build(config, "classification", 10, find_copies(config, copied))
    plan = wrapped.plan(ctx)
    assert plan.phase == "select+dedup" and plan.weights is not None  # pruned: the kept below-mean rows reweighted
    assert float(plan.weights.max()) > 1.0
    plain = build(config, "classification", 10, find_copies(config, distinct)).plan(ctx)  # forced: each row an item
    assert plain.phase == "select+dedup" and plain.weights is None  # two passes: all data
