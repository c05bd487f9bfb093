"""``importance``: importance sampling by an upper bound of each sample's gradient norm (Katharopoulos and Fleuret,
ICML 2018, "Not All Samples Are Created Equal"), switched on only while it reduces the variance enough.

What it does: after a first full epoch, each sample's score is an upper bound of the norm of its loss gradient with
respect to the model's output, read from its last training loss (free: no extra forward pass). For cross-entropy
that norm is ``||softmax - onehot||``, which lies between ``1 - p_y`` and ``sqrt(2) (1 - p_y)`` with ``p_y =
exp(-loss)``, so ``1 - exp(-loss)`` is the score (up to a constant factor, which sampling ignores); for the mean
squared error the norm is proportional to ``sqrt(loss)``; for L1 it is constant (importance sampling is then
uniform). The sampling distribution mixes the scores with uniform, ``p_i = (1 - UNIFORM_SHARE) g_i / sum g +
UNIFORM_SHARE / n``, as the authors' cache sampler does with recent training losses, which bounds every weight by
``1 / UNIFORM_SHARE`` and makes every sample come back, so no score stays stale for long.

Each epoch draws ``k = KEEP * n`` samples (whole batches) with inclusion probabilities ``pi_i = k p_i`` (capped at 1,
the excess spread over the others) by randomised systematic sampling, which draws exactly ``k`` samples and includes
each with probability exactly ``pi_i``, and weights a kept sample's loss by ``k / (n pi_i)``: the epoch's mean
weighted gradient is then an unbiased estimate of the full data's mean gradient (Horvitz-Thompson), and each step is
an importance-sampled step of the same mean gradient uniform training takes. A sample without a score is always kept.

The switch: the variance reduction over uniform sampling is estimated as the authors do, ``tau = 1 / sqrt(1 -
||p - u||^2 / ||p||^2) = sqrt(n sum p_i^2)`` (``u`` the uniform distribution); an epoch samples by importance only
when ``tau >= TAU_MIN`` (their default threshold), else it is a plain uniform epoch over all data. The scores cost
nothing here (no presampled batch is scored), so the threshold guards against the scores' staleness, not against a
scoring cost. When it helps: data whose samples differ widely in how much is left to learn, e.g. many redundant,
already-learnt samples; under label noise the mislabelled samples keep the largest scores, so combine it with the
noise filter. Knobs: ``select_warmup`` (uniform until this share of the window is used, and at least one epoch).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import sampler
from .base import EpochContext, EpochPlan, Strategy

if TYPE_CHECKING:
    from ..config import Config

KEEP = 0.5  # share of the data drawn per epoch: scores of half the data are re-measured every epoch
UNIFORM_SHARE = 0.5  # the authors' cache sampler mixes half uniform, half by score
TAU_MIN = 1.2  # the authors' default variance-reduction threshold


def gradient_bound(loss: torch.Tensor, loss_name: str) -> torch.Tensor:
    """An upper bound (up to a constant factor) of each sample's gradient norm with respect to the model's output,
    from its loss: ``1 - exp(-loss)`` for cross-entropy, ``sqrt(loss)`` for the squared error, 1 for L1."""
    if loss_name == "cross_entropy":
        return -torch.expm1(-loss.clamp_min(0.0))
    if loss_name == "mse":
        return loss.clamp_min(0.0).sqrt()
    return torch.ones_like(loss)


def sampling_distribution(score: torch.Tensor, uniform_share: float = UNIFORM_SHARE) -> torch.Tensor:
    """``p_i``: the scores normalised to sum 1, mixed with the uniform distribution (all uniform if every score is
    zero)."""
    n = len(score)
    total = score.sum()
    if not bool(total > 0):
        return torch.full_like(score, 1.0 / n)
    return (1.0 - uniform_share) * score / total + uniform_share / n


def variance_reduction(p: torch.Tensor) -> float:
    """Katharopoulos and Fleuret's ``tau = 1 / sqrt(1 - ||p - u||^2 / ||p||^2)``, which equals ``sqrt(n sum p^2)``:
    1 for the uniform distribution, larger the more the scores differ."""
    return float((len(p) * p.double().square().sum()).sqrt())


def importance_plan(score: torch.Tensor, seen: torch.Tensor, k: int, generator: torch.Generator,
                    tau_min: float = TAU_MIN) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
    """The pure function behind the strategy: ``(mask, weights, tau)`` for one epoch of ``k`` samples drawn by
    importance, or ``(None, None, tau)`` when ``tau < tau_min`` or there is nothing to choose (train uniformly on all
    data). Unseen samples are always kept; the others share the remaining draws by their scores. Weights are ``k /
    (n pi_i)`` for every kept sample, so the mean weighted loss over the kept samples is unbiased for the mean loss
    over all."""
    n = len(score)
    unseen = ~seen
    n_seen = int(seen.sum())
    draws = k - int(unseen.sum())
    if n_seen == 0:
        return None, None, 1.0
    p = sampling_distribution(score[seen].float())
    tau = variance_reduction(p)
    if tau < tau_min or draws <= 0 or draws >= n_seen:
        return None, None, tau
    pi = torch.ones(n, dtype=torch.float64, device=score.device)
    pi[seen] = sampler.inclusion_probabilities(p, draws)
    mask = sampler.systematic_sample(pi, generator).to(score.device) | unseen
    return mask, (k / (n * pi)).to(score.dtype), tau


class Importance(Strategy):
    name = "importance"

    def __init__(self, config: "Config", task: str) -> None:
        super().__init__(config, task)
        auto = "cross_entropy" if task == "classification" else "mse"  # the trainer's rule for loss "auto"
        self.loss_name = auto if config.loss == "auto" else config.loss
        self.tau: float | None = None  # the last epoch's variance-reduction estimate (None: not computed yet)
        self.tau_min = TAU_MIN

    def plan(self, ctx: EpochContext) -> EpochPlan:
        if ctx.epoch == 0 or ctx.progress < self.config.select_warmup:
            return EpochPlan(phase="warmup")
        scores = ctx.scores
        k = self.whole_batches(KEEP * scores.n, scores.n)
        mask, weights, self.tau = importance_plan(gradient_bound(scores.last, self.loss_name), scores.seen, k,
                                                  ctx.generator, self.tau_min)
        if mask is None:
            return EpochPlan(phase="uniform")
        return EpochPlan(mask=mask.cpu(), weights=weights, phase="importance")
