"""``selective-backprop``: Selective-Backprop (Jiang et al. 2019, "Accelerating Deep Learning by Focusing on the
Biggest Losers"): every batch is forwarded, but only the samples it draws by the rank of their loss are
back-propagated.

What it does: each epoch trains on all data in a fresh shuffle (the plan is ``full``'s), but a training step becomes
a forward pass without gradient over the batch (the candidates), which gives every candidate's loss. Each loss joins
a history of the last ``WINDOW`` losses (the authors' 1,024) and the candidate is kept for the backward pass with
probability ``F(loss) ** BETA``, ``F`` the share of the history at most this loss (the authors' percentile rule,
``percentileofscore(kind="weak")``; ``BETA`` 1 keeps about half, 2 a third). Kept samples queue up; once a batch's
worth is queued, one ordinary training step (forward and backward) runs on exactly one batch of them, so every
optimizer step has the run's batch size. Time is saved where the backward pass costs more than the candidate
forward: per candidate, ``F + s (F + B)`` instead of ``F + B`` with ``s`` the kept share.

Rules it keeps: a sample the score table has never measured (its first visit) is always kept, so nothing is skipped
that the model never learnt from once; a non-finite loss is kept (the divergence guard must see its step). Like the
paper's warm-up (and Composer's start/end), it back-propagates everything in the first ``select_warmup`` of the
window and in the final ``anneal`` share, so the learning rate decays to zero over the full data.

The switch: selection only pays if a candidate costs less than a full step. When it first becomes active, the
strategy times ``PROBE`` ordinary steps and then ``PROBE`` selective ones (synchronised at each, so an asynchronous
device is timed truly) and keeps selecting only if candidates go through at least ``MIN_SPEEDUP`` times faster
than ordinary samples; otherwise it trains uniformly (ordinary steps on all data) for the rest of the run, and the
epochs say ``uniform``. Under torchrun it is not wrapped around the step (ranks would step at different times) and
trains as ``full``.

Counting: the run's ``steps`` and ``samples`` count candidates forwarded (every sample is forwarded once per epoch);
``summary.json``'s ``backprop`` says how many were back-propagated and how many optimizer steps ran. When it
helps: where the backward pass dominates the step (convolutional networks on an accelerator, the paper's setting)
and many samples are already learnt; under label noise the mislabelled samples keep the highest losses and are
always kept, so leave the noise filter on (the default ``filter_noisy: auto`` wraps it). Knobs: ``select_warmup``,
``anneal``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from .base import EpochContext, EpochPlan, Strategy

if TYPE_CHECKING:
    from ..config import Config
    from ..scores import ScoreTable

WINDOW = 1024  # losses in the history (the authors' default)
BETA = 1.0  # keep probability = percentile ** BETA: about half of the candidates back-propagated
PROBE = 16  # ordinary and selective steps timed when selection first becomes active
MIN_SPEEDUP = 1.2  # candidates per second over ordinary samples per second that selection must reach to stay on

Step = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def percentile(history: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """Per loss, the share of ``history`` at most it (``scipy.stats.percentileofscore(kind="weak") / 100``)."""
    return (history.unsqueeze(0) <= losses.unsqueeze(1)).float().mean(1)


def keep_mask(history: torch.Tensor, losses: torch.Tensor, draws: torch.Tensor, unscored: torch.Tensor,
              beta: float = BETA) -> torch.Tensor:
    """The pure selection rule: keep a candidate when ``draw < percentile ** beta``, and always keep unscored or
    non-finite ones. ``history`` already holds ``losses`` (as in the authors' code, a loss is ranked among the history
    it has just joined)."""
    return (draws < percentile(history, losses).pow(beta)) | unscored | ~torch.isfinite(losses)


class SelectiveBackprop(Strategy):
    name = "selective-backprop"

    def __init__(self, config: "Config", task: str) -> None:
        super().__init__(config, task)
        self.generator = torch.Generator().manual_seed(config.seed + 7)
        self.history = torch.empty(0)
        self.active = False  # this epoch selects (after the warm-up, before the anneal, switch on)
        self.off = False  # the switch found that selection does not pay: uniform for the rest of the run
        self.probe: dict[str, list[float]] = {"plain": [0.0, 0.0], "selective": [0.0, 0.0]}  # seconds, samples
        self.scores: "ScoreTable | None" = None
        self.backprop_samples = self.backprop_steps = 0
        self.now: Callable[[], float] = time.perf_counter  # the probe's clock (tests inject a fake one)

    def plan(self, ctx: EpochContext) -> EpochPlan:
        self.scores = ctx.scores
        if ctx.progress >= 1.0 - self.config.anneal:
            phase = "anneal"
        elif ctx.epoch == 0 or ctx.progress < self.config.select_warmup:
            phase = "warmup"
        else:
            phase = "uniform" if self.off else "backprop"
        self.active = phase == "backprop"
        return EpochPlan(phase=phase)

    def remember(self, losses: torch.Tensor) -> None:
        """Add a batch's losses to the history window (the newest ``WINDOW``)."""
        history = torch.cat([self.history.to(losses.device), losses.detach().float()])
        self.history = history[-WINDOW:]

    def backprop(self, step: Step, forward: Forward, batch_size: int) -> Callable[..., torch.Tensor]:
        """The training step the loop calls, ``(x, y, weights, index) -> per-sample losses``: ordinary until the
        selection phase, then the candidate forward, the percentile rule and a step per batch of kept samples."""
        queue: list[tuple[torch.Tensor, ...]] = []

        def timed(kind: str, fn: Callable[[], torch.Tensor], n: int) -> torch.Tensor:
            t0 = self.now()
            losses = fn()
            float(losses.sum())  # wait for an asynchronous device, so the time is the step's
            self.probe[kind][0] += self.now() - t0
            self.probe[kind][1] += n
            return losses

        def selective(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None,
                      index: torch.Tensor) -> torch.Tensor:
            losses = forward(x, y)
            self.remember(losses)
            unscored = ~self.scores.seen[index.to(self.scores.count.device)].to(losses.device) \
                if self.scores is not None else torch.ones_like(losses, dtype=torch.bool)
            draws = torch.rand(len(losses), generator=self.generator).to(losses.device)
            keep = keep_mask(self.history, losses, draws, unscored)
            queue.append((x[keep], y[keep], weights[keep] if weights is not None else None))
            if sum(len(q[0]) for q in queue) >= batch_size:
                bx, by = torch.cat([q[0] for q in queue]), torch.cat([q[1] for q in queue])
                bw = torch.cat([q[2] for q in queue]) if queue[0][2] is not None else None
                queue.clear()
                if len(bx) > batch_size:
                    queue.append((bx[batch_size:], by[batch_size:], bw[batch_size:] if bw is not None else None))
                step(bx[:batch_size], by[:batch_size], bw[:batch_size] if bw is not None else None)
                self.backprop_steps += 1
                self.backprop_samples += batch_size
            return losses

        def ordinary(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
            losses = step(x, y, weights)
            self.remember(losses)
            self.backprop_steps += 1
            self.backprop_samples += len(x)
            return losses

        def run(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
            if not self.active or self.off:
                return ordinary(x, y, weights)
            plain, chosen = self.probe["plain"], self.probe["selective"]
            if plain[1] < PROBE * batch_size:
                return timed("plain", lambda: ordinary(x, y, weights), len(x))
            if chosen[1] < PROBE * batch_size:
                losses = timed("selective", lambda: selective(x, y, weights, index), len(x))
                if chosen[1] >= PROBE * batch_size:
                    self.off = self.speedup() < MIN_SPEEDUP
                return losses
            return selective(x, y, weights, index)

        return run

    def speedup(self) -> float:
        """Candidates per second under selection over samples per second of ordinary steps, from the probe."""
        (plain_s, plain_n), (chosen_s, chosen_n) = self.probe["plain"], self.probe["selective"]
        return (chosen_n / max(chosen_s, 1e-9)) / (plain_n / max(plain_s, 1e-9))

    def summary(self) -> dict[str, Any]:
        probed = self.probe["selective"][1] > 0
        return {"backprop_samples": self.backprop_samples, "backprop_steps": self.backprop_steps,
                "speedup": round(self.speedup(), 3) if probed else None, "switched_off": self.off}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.cpu(), "off": self.off, "probe": self.probe,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.off, self.probe = state["history"], bool(state["off"]), state["probe"]
        self.generator.set_state(state["generator"].cpu())
