"""``filter_noisy``: leave out samples that are probably mislabelled; a wrapper usable with any strategy.

What it does: as in DivideMix (Li et al., ICLR 2020), the running-average losses of the scored samples are normalised
to [0, 1] (min to 99th percentile, so a few extreme losses cannot claim a component for themselves) and a
two-component 1-D Gaussian mixture is fitted to them by EM (:func:`fit_mixture`: a few tensor operations per
iteration, the means started at the two ends; scikit-learn's ``GaussianMixture`` did the same work but its import cost
0.6 s, 8-10 s on a busy machine, inside the training window). A sample whose posterior of the high-loss component
exceeds 0.5 in ``PERSIST`` consecutive fits is left out of every later epoch, whatever the wrapped strategy planned,
the final full-data phase included; left-out samples are not trained again, so the decision stands.

Fitting starts after ``WARM_PASSES`` passes' worth of samples are trained (and ``select_warmup`` of the window is
used; ``PARTIAL`` of a pass may be missing, as epochs may drop a trailing partial batch). That is early on purpose:
a small network memorises flipped labels within a few passes (the benchmark's MLP on 1,500 digits with 20% flipped,
development seed: the share of samples with a loss above ln 10 was 18% after 2 passes, 7% after 4, 2% after 6; the
area under the ROC curve of the last loss for the flipped samples 0.90 after 4 passes, 0.73 after 8), so high losses
must be read while flipped samples still stand out. The first ``PERSIST`` fits come at consecutive
plans, so the first exclusions are made as early as the persistence rule allows; later fits are at least
``MIN_GAP`` of the window apart and spaced so that they cost about ``COST_SHARE`` of the budget. A fit uses at most
``MAX_FIT`` losses (an even stride through the data); the posterior is evaluated for all samples with tensor ops on
the scores' device.

Whether to filter at all (``filter_noisy: auto``, the default): DivideMix's mixture always splits the losses in two,
also on clean data (16-19% of the samples in the high-loss component), so the split alone cannot say "noisy". What does:
a mislabelled sample is one the model contradicts, giving its label less than chance probability, while it learns the
rest, and it stays so until memorised; a clean hard sample, or one of a minority class, is above chance only until it is
learnt. At every plan after the warm-up the filter counts, per sample re-measured since the last plan, how many plans in
a row its last loss stayed above the chance loss ``ln C`` (``C`` classes: a prediction that knows nothing; unknown
``C``: the mean loss of the run's first batch), and decides "noisy" once the share of samples contradicted at
``CONTRADICTED_PLANS`` plans in a row is between ``MIN_SHARE`` and ``MAX_SHARE``, judged only once the median loss is
below ``LEARNT`` of the chance loss (a run of one step per epoch is still near chance after a few passes). The decision
is latched; until it is made nothing is left out (the plan is the wrapped strategy's), and a run that has not decided by
the time the network memorised its labels never will (the share falls under ``MIN_SHARE`` after a few more plans, on
noisy data too). Development data (``benchmarks/budget_accuracy.py``'s sets drawn with data seed 100 in place of 0,
training seeds 100-102, budgets of 9 to 34 passes; none of the reported cells): the share at the first plan where it can
be measured (the fourth) was 0.2-0.5% on clean digits, 0.5-0.9% on the imbalanced set, 0% on the redundant one, and
2.3-2.9%, 4% and 4-4.7% with 10%, 20% and 40% flipped labels; ``MIN_SHARE`` = 1.5% lies near the geometric middle of
0.9% and 2.3%. Paired with ``full`` over those seeds, ``auto`` gained 3.9 points with 10% flipped labels, 7.9-8.6 with
20% and 9.2-12.5 with 40%, and stayed off in every clean, imbalanced and redundant run; the filter forced on (``true``)
cost 2.2-2.6 points on the imbalanced set (it leaves out the minority classes still being learnt) and up to 1 point on
the redundant one. Epochs in which the filter leaves samples out have ``+filtered`` appended to their phase in
``metrics.jsonl``.

When it helps: classification with label noise (the high-loss component holds the flipped labels); forced on
(``true``) on clean data it drops the hardest correct samples. Where classes overlap so much that the features
contradict a few percent of the labels (samples on the wrong side of the best boundary), ``auto`` cannot tell that
from label noise and switches on too (a synthetic set of three overlapping Gaussian classes in the tests did).
Regression is refused with a :class:`~timebudget.errors.TimebudgetError` when forced, and ``auto`` leaves regression
alone: a persistently high regression loss marks a hard region or an outlier, not a wrong label. Knob:
``filter_noisy`` (``auto``, ``true``, ``false``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import TimebudgetError
from .base import EpochContext, EpochPlan, Strategy, Wrapper

if TYPE_CHECKING:
    from ..config import Config

PERSIST = 2
WARM_PASSES = 2
PARTIAL = 0.25  # of a pass may be missing from the warm-up: epochs may leave a trailing partial batch out
MIN_GAP = 0.05
COST_SHARE = 0.01
MAX_FIT = 5_000  # a fit then costs a few milliseconds
CONTRADICTED_PLANS = 3  # a sample above the chance loss at this many plans in a row is confidently contradicted
MIN_SHARE, MAX_SHARE = 0.015, 0.5
LEARNT = 0.5  # the share is judged only once the median loss is below this fraction of the chance loss


class NoisyFilter(Wrapper):
    def __init__(self, inner: Strategy, config: "Config", task: str, auto: bool = False,
                 classes: int | None = None) -> None:
        if task != "classification":
            raise TimebudgetError(
                f"filter_noisy needs a classification task, this data is {task}: a high regression loss marks a hard "
                "sample or an outlier, not a wrong label; run without filter_noisy"
            )
        super().__init__(inner, config, task)
        self.name = f"{inner.name}+filter_noisy"
        self.streak: torch.Tensor | None = None  # consecutive fits in which each sample was in the high-loss component
        self.excluded: torch.Tensor | None = None
        self.next_fit = config.select_warmup
        self.auto = auto
        self.noisy = not auto  # auto: filter only once the losses look noisy (see :meth:`observe`)
        # the loss of a prediction that knows nothing (uniform over the classes); unknown classes: measured
        self.chance: float | None = math.log(classes) if classes and classes > 1 else None
        self.contradicted: torch.Tensor | None = None  # plans in a row each sample's loss was above ``chance``
        self.measured_to = -1  # the latest score step seen at the previous plan
        self.checks: list[float] = []  # per plan after the warm-up: share of samples contradicted CONTRADICTED_PLANS
        self.fits: list[dict[str, float]] = []  # per fit: progress, share of the high-loss component, separation

    def plan(self, ctx: EpochContext) -> EpochPlan:
        plan = self.inner.plan(ctx)
        scores = ctx.scores
        if self.chance is None and bool(scores.seen.any()):
            first = scores.step.masked_fill(~scores.seen, torch.iinfo(torch.int64).max).min()
            self.chance = float(scores.last[scores.step == first].mean())
        if int(scores.count.sum()) >= (WARM_PASSES - PARTIAL) * scores.n:
            self.observe(ctx)
            if ctx.progress >= self.next_fit:
                self.fit(ctx)
        if self.excluded is None or not self.noisy:
            return plan
        noisy = self.excluded.cpu()
        if not bool(noisy.any()):
            return plan
        mask = ~noisy if plan.mask is None else plan.mask & ~noisy
        if not bool(mask.any()):  # the wrapped subset holds only suspects: train it rather than nothing
            return plan
        refresh = plan.refresh[~noisy[plan.refresh]] if plan.refresh is not None else None
        return EpochPlan(mask=mask, weights=plan.weights, phase=f"{plan.phase}+filtered", refresh=refresh)

    def observe(self, ctx: EpochContext) -> None:
        """``auto``'s evidence, once per plan: count, per sample re-measured since the last plan, how many plans in a
        row its last loss stayed above the chance loss, and decide "noisy" (latched) once the share of samples
        contradicted ``CONTRADICTED_PLANS`` times in a row lies between ``MIN_SHARE`` and ``MAX_SHARE``, judged only
        once the median loss is below ``LEARNT`` of the chance loss (passes are not learning: with one step per
        epoch every sample is still near chance after a few passes)."""
        scores = ctx.scores
        assert self.chance is not None  # measured at the first plan with scores
        if self.contradicted is None:
            self.contradicted = torch.zeros_like(scores.count)
        fresh = scores.step > self.measured_to
        self.measured_to = int(scores.step.max())
        above = scores.last > self.chance
        self.contradicted = torch.where(fresh, (self.contradicted + 1) * above, self.contradicted)
        seen = scores.seen
        if float(scores.last[seen].median()) >= LEARNT * self.chance:  # the typical sample is not learnt yet
            return
        share = float((self.contradicted >= CONTRADICTED_PLANS).sum()) / max(1, int(seen.sum()))
        self.checks.append(share)
        if self.auto and not self.noisy:
            self.noisy = MIN_SHARE <= share <= MAX_SHARE

    def fit(self, ctx: EpochContext) -> None:
        """Fit the mixture, update the streaks and exclusions, and schedule the next fit by this one's cost."""
        start = time.perf_counter()
        seen, loss = ctx.scores.seen, ctx.scores.average
        scored = loss[seen]
        lo = scored.min()
        hi = scored.kthvalue(max(1, math.ceil(0.99 * len(scored)))).values
        x = ((loss.clamp(max=hi) - lo) / (hi - lo).clamp_min(1e-12)).masked_fill(~seen, 0.0)
        gmm = fit_mixture(x[seen][:: math.ceil(len(scored) / MAX_FIT)].double())
        high = (gmm.posterior_high(x) > 0.5) & seen
        self.fits.append({"progress": ctx.progress, "share": float(high.sum()) / len(scored),
                          "separation": ashman_d(gmm)})
        if self.streak is None or self.excluded is None:
            self.streak = torch.zeros_like(loss, dtype=torch.int32)
            self.excluded = torch.zeros_like(seen)
        self.streak = (self.streak + 1) * high
        self.excluded |= self.streak >= PERSIST
        cost = time.perf_counter() - start
        back_to_back = len(self.fits) < PERSIST  # the first exclusions as early as the persistence rule allows
        spacing = max(MIN_GAP, cost / (COST_SHARE * self.config.seconds))
        self.next_fit = ctx.progress + (0.0 if back_to_back else spacing)

    def state_dict(self) -> dict[str, Any]:
        tensors = (("streak", self.streak), ("excluded", self.excluded), ("contradicted", self.contradicted))
        cpu = {k: None if v is None else v.cpu() for k, v in tensors}
        return {"inner": self.inner.state_dict(), "next_fit": self.next_fit, "noisy": self.noisy,
                "chance": self.chance, "measured_to": self.measured_to, **cpu}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.streak, self.excluded, self.next_fit = state["streak"], state["excluded"], state["next_fit"]
        self.contradicted, self.chance = state.get("contradicted"), state.get("chance")
        self.noisy, self.measured_to = state.get("noisy", self.noisy), state.get("measured_to", -1)


@dataclass
class Mixture:
    """A two-component 1-D Gaussian mixture: weights, means and variances, each a tensor of two."""

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """log(weight_k * N(x | mean_k, variance_k)) for every entry of ``x`` (N, 2), in ``x``'s dtype and device."""
        w, mu, var = (t.to(x.device, x.dtype) for t in (self.weights, self.means, self.variances))
        return w.log() - 0.5 * (2 * math.pi * var).log() - (x[:, None] - mu).square() / (2 * var)

    def posterior_high(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior probability of the component with the higher mean, for every entry of ``x``."""
        return self.log_joint(x).softmax(dim=1)[:, int(self.means.argmax())]


def fit_mixture(x: torch.Tensor, tol: float = 1e-2, reg_covar: float = 5e-4, max_iter: int = 100) -> Mixture:
    """EM for two 1-D Gaussians on ``x`` in [0, 1], as scikit-learn's ``GaussianMixture(2, tol, reg_covar)`` with
    ``means_init=[0, 1]``: responsibilities start from the nearer end, the means start at the two ends, and EM stops
    when the mean log-likelihood per sample changes by less than ``tol``."""
    near_high = (x > 0.5).to(x.dtype)
    resp = torch.stack([1.0 - near_high, near_high], dim=1)
    mixture = _m_step(x, resp, reg_covar)
    mixture.means = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
    previous = -math.inf
    for _ in range(max_iter):
        log_joint = mixture.log_joint(x)
        log_norm = log_joint.logsumexp(dim=1)
        mixture = _m_step(x, (log_joint - log_norm[:, None]).exp(), reg_covar)
        current = float(log_norm.mean())
        if abs(current - previous) < tol:
            break
        previous = current
    return mixture


def _m_step(x: torch.Tensor, resp: torch.Tensor, reg_covar: float) -> Mixture:
    counts = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = (resp * x[:, None]).sum(0) / counts
    variances = (resp * (x[:, None] - means).square()).sum(0) / counts + reg_covar
    return Mixture(counts / len(x), means, variances)


def ashman_d(gmm: Mixture) -> float:
    """Ashman's D of a two-component 1-D mixture: the distance of the means in units of the pooled spread; above 2 the
    components are clearly separated (the mixture is bimodal)."""
    means, var = gmm.means.tolist(), gmm.variances.tolist()
    return float(math.sqrt(2.0) * abs(means[0] - means[1]) / math.sqrt(var[0] + var[1]))
