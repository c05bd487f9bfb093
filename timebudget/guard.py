"""The divergence guard: a non-finite or exploding loss rolls the run back to its last good state at a lower lr.

The guard keeps each step's losses (a reference, no copy) and checks them ``WINDOW`` steps at a time, as one
(steps x batch) tensor: about 50 torch calls per window, and 2 per step. Checked step by step they were 18 calls a
step, by their count about 26 kernel launches a step on CUDA (about 14% of resnet18's, which on a fast GPU is host time
the device waits for); windowed, 8.7 calls a step on the CPU (session 13, a digits run). A loss is bad when its batch
mean is not finite or exceeds ``EXPLODE`` times the larger of the running level (as it stood before the window) and
the loss measured at calibration (the level of an untrained model: normal batch-to-batch noise never comes near it, an
exploding model passes it at once). The "bad" flag accumulates on the device, with no host-device synchronisation; on
CUDA it is read through a copy made without waiting and read a few steps later, when its event reports it arrived (as
the clock reads step ends). So a bad step is acted on up to ``WINDOW`` steps (and on CUDA a few more) after it was
trained: those steps are rolled back with it. Every decision that must not miss a step (a snapshot, a resumable
checkpoint, the final check, the saved level) checks the steps still held first.

A classifier can also fail without any loss going bad: one large step kills every ReLU of a layer, the logits become
the same for every input, and the loss sits at about ln(classes) until the deadline (issue 11's textbook CNN on
``cifar-digits`` at SGD lr 0.1). Such a *collapse* is recognised from the same per-sample losses: with constant logits a
sample's loss depends on its label alone, so a batch of at least twice as many samples as classes shows at most one
distinct loss per class. ``COLLAPSE_STEPS`` such steps in a row trip the flag like a bad loss (a sort of the batch's
losses per step; a healthy network, even an untrained one, gives nearly every sample its own loss). Units die over tens
of steps before the last one does, so the snapshots just before a collapse may be dying already: a collapse goes back
to the state training started from, at a tenth of the learning rate (a collapse means the rate is far past the edge,
not one bad batch), and no snapshot is taken while such a row is open.

Every ``every_s`` seconds (2% of the budget, 0.5 to 5 s; charged to the budget, outside step timing) the flag is read
with the device settled and, if clean, an in-memory snapshot of the training state (model, optimizer, weight average,
gradient scaler) is taken.
When the flag trips, the last snapshot is restored, the learning rate is multiplied by ``LR_FACTOR`` and training
goes on; after ``MAX_ROLLBACKS`` rollbacks with no good snapshot between them the run is declared diverged, stops,
and is saved in its last good state. The snapshot lives on the training device: it doubles the memory the model and
optimizer state take, in exchange for a restore that costs microseconds instead of a trip to the host.

Under torchrun the decisions are collective, so the DDP replicas stay identical: the trainer folds each rank's
:meth:`DivergenceGuard.tripped` and rank 0's :meth:`DivergenceGuard.due` into the per-step agreement it already makes
(no extra collective per step) and passes the agreed values to :meth:`DivergenceGuard.check`; every rank then rolls
back, or snapshots, after the same step. A bad loss on one rank is a bad step on all of them (DDP averages its
gradients into every replica). The settled read at a snapshot (the steps held checked first), and the final check, ask
``any_rank``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

EXPLODE = 100.0  # a loss this many times its running level (or the untrained model's loss) has exploded
LEVEL_MOMENTUM = 0.9  # the running level: an exponential average of the good steps' mean losses
LR_FACTOR = 0.5
MAX_ROLLBACKS = 3
COLLAPSE_STEPS = 8  # steps in a row whose losses take at most one value per class: the logits are constant
COLLAPSE_TOLERANCE = 1e-6  # losses closer than this (relative) count as one value
# ... and only above this share of the untrained model's loss: constant logits cost at least the batch's label entropy
# (0.14 for 31 samples of one class and 1 of another), while a network that has learnt its data gives every sample a
# loss of exactly 0.0 in float32 (all one value, at most one per class), which counted as a collapse (session 10: a
# resumed torchrun test on 640 learnt samples rolled back three times and stopped as "diverged")
COLLAPSE_MIN_SHARE = 0.01
COLLAPSE_LR_FACTOR = 0.1  # a collapse means the lr is far past the edge, not one bad batch
SNAPSHOT_EVERY_S = 5.0  # at most; a short budget snapshots every SNAPSHOT_SHARE of it, so a rollback loses little,
SNAPSHOT_SHARE = 0.02
SNAPSHOT_MIN_S = 0.5  # but no more often than this: each snapshot waits for the device's queue to drain
WINDOW = 8  # steps checked together: a bad step is acted on at most this many steps late


def snapshot_interval(budget_s: float, every_s: float | None = None) -> float:
    """Seconds between snapshots: ``every_s`` when given, else 2% of the budget, between ``SNAPSHOT_MIN_S`` and
    ``SNAPSHOT_EVERY_S``."""
    if every_s is not None:
        return every_s
    return min(SNAPSHOT_EVERY_S, max(SNAPSHOT_MIN_S, SNAPSHOT_SHARE * budget_s))

OK, ROLLED_BACK, DIVERGED = "ok", "rolled_back", "diverged"


class DivergenceGuard:
    """Watches the per-sample losses of each step; :meth:`check` at step boundaries rolls back when they went bad.

    ``capture()`` returns the training state as tensors that the next steps do not modify (a copy); ``restore(state)``
    puts such a state back; ``scale_lr(factor)`` lowers the learning rate for the rest of the run.
    """

    def __init__(
        self,
        initial_loss: float,
        device: torch.device,
        capture: Callable[[], Any],
        restore: Callable[[Any], None],
        scale_lr: Callable[[float], None],
        every_s: float = SNAPSHOT_EVERY_S,
        max_rollbacks: int = MAX_ROLLBACKS,
        any_rank: Callable[[bool], bool] = bool,
        classes: int | None = None,
    ) -> None:
        """``classes``: a classifier's class count, to watch for a collapse to constant logits (None: regression)."""
        self.capture, self.restore, self.scale_lr, self.any_rank = capture, restore, scale_lr, any_rank
        self.classes = classes
        self.every_s, self.max_rollbacks = every_s, max_rollbacks
        self.on_host = device.type != "cuda"
        self.reference = abs(initial_loss) if math.isfinite(initial_loss) else 1.0
        # on the training device, so that checking never waits for it
        self.level = torch.tensor(self.reference, device=device)  # the running level of the good steps' mean losses
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.constant_steps = torch.zeros((), dtype=torch.int64, device=device)  # the current row of label-only steps
        # whether a row reached COLLAPSE_STEPS since the last check: under torchrun the check comes at the next
        # agreement, a few steps later, when a healthy step may have ended the row
        self.collapsed = torch.zeros((), dtype=torch.bool, device=device)
        self._held: list[torch.Tensor] = []  # the steps' losses not yet checked
        self._weights: dict[int, torch.Tensor] = {}  # per window length: each step's weight in the level's update
        self._pending: tuple[torch.Tensor, Any] | None = None  # CUDA: the flag's copy on its way to the host
        self._unread = False  # CUDA: a window was checked since the flag's last copy (it changes only then)
        self.snapshot: Any = None
        self.snapshot_at = -math.inf
        self.streak = 0  # rollbacks since the last good snapshot
        self.rollbacks: list[dict[str, Any]] = []

    def start(self, elapsed: float) -> None:
        """The first snapshot, of the state training starts from (good by definition)."""
        self.snapshot, self.snapshot_at = self.capture(), elapsed
        self.first, self.first_at = self.snapshot, elapsed  # a collapse returns here: later states may be dying

    def observe(self, losses: torch.Tensor) -> None:
        """Account one step's per-sample losses, without waiting for the device: held, and checked with the next
        ``WINDOW - 1`` steps' (or sooner, where a decision needs them)."""
        self._held.append(losses.detach())
        if len(self._held) >= WINDOW:
            self.settle()

    def settle(self) -> None:
        """Check the steps held: the flag, the collapse row and the running level then account for every step
        observed. Steps of one batch size are checked as one tensor; a window of mixed sizes (Selective-Backprop's
        last batch, a test's) step by step."""
        held, self._held = self._held, []
        if not held:
            return
        self._unread = True
        if all(h.shape == held[0].shape for h in held):
            self._check(torch.stack(held).flatten(1))
        else:
            for h in held:
                self._check(h.reshape(1, -1))

    def _check(self, rows: torch.Tensor) -> None:
        """Account a (steps x batch) tensor of losses, in order."""
        rows = rows.float()
        means = rows.mean(1)
        bad = ~torch.isfinite(means) | (means > self.threshold())
        constant = self.label_only(rows, means)
        if constant is not None:
            # each step's row length: steps since the last step that was not label-only (the row before the window
            # continues into it); the row still open at the window's end carries over
            index = torch.arange(len(rows), device=rows.device)
            last_break = torch.where(constant, -1, index).cummax(0).values
            row = torch.where(last_break < 0, index + 1 + self.constant_steps, index - last_break)
            self.collapsed |= row.max() >= COLLAPSE_STEPS
            self.constant_steps.copy_(row[-1])
            self.bad |= self.collapsed
        any_bad = bad.any()
        self.bad |= any_bad
        # the exponential average over the window's means, in order; a window with a bad step keeps the level (the
        # flag then rolls the run back)
        weights = self._weights.get(len(rows))
        if weights is None:
            k = len(rows)
            powers = LEVEL_MOMENTUM ** torch.arange(k - 1, -1, -1, dtype=torch.float32, device=rows.device)
            weights = self._weights[k] = (1 - LEVEL_MOMENTUM) * powers
        updated = LEVEL_MOMENTUM ** len(rows) * self.level + (weights * torch.where(bad, 0.0, means)).sum()
        self.level.copy_(torch.where(any_bad, self.level, updated))

    def label_only(self, losses: torch.Tensor, means: torch.Tensor) -> torch.Tensor | None:
        """Per row of ``losses`` (steps x batch): whether the step's losses take at most one value per class while
        their mean (``means``) is not a learnt batch's near zero (a bool per step; None when the guard does not
        watch for collapse, or the batch is too small to tell: under twice the class count)."""
        if self.classes is None or losses.shape[1] < 2 * self.classes:
            return None
        ordered = losses.sort(dim=1).values
        steps = ordered.diff(dim=1) > COLLAPSE_TOLERANCE * (1.0 + ordered[:, 1:].abs())
        # distinct values = steps + 1 <= classes, and not the zeros of a learnt batch
        return (steps.sum(1) < self.classes) & (means > COLLAPSE_MIN_SHARE * self.reference)

    def threshold(self) -> torch.Tensor:
        return EXPLODE * self.level.clamp(min=self.reference)

    def clean(self, losses: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """``losses`` with every bad value replaced by ``fallback`` (the score table keeps no loss of a discarded
        trajectory as a sample's score)."""
        good = torch.isfinite(losses) & (losses <= self.threshold())
        return torch.where(good, losses, fallback)

    def due(self, elapsed: float) -> bool:
        """Whether a snapshot is due at ``elapsed``."""
        return elapsed - self.snapshot_at >= self.every_s

    def tripped(self) -> bool:
        """Whether the flag has been seen set, as of the last window checked: read at once on a CPU, through a copy
        read a few steps late on CUDA, made once per window checked (not per step: the flag changes only then)."""
        if self.on_host:
            return bool(self.bad)
        if self._pending is not None and self._pending[1].query():
            seen, self._pending = bool(self._pending[0]), None
            if seen:
                return True
        if self._pending is None and self._unread:
            self._unread = False
            host = self.bad.to("cpu", non_blocking=True)
            arrived = torch.cuda.Event()
            arrived.record()
            self._pending = (host, arrived)
        return False

    def check(
        self, elapsed: float, pause: Callable[[], Callable[[], None]], final: bool = False,
        tripped: bool | None = None, due: bool | None = None,
    ) -> str:
        """At a step boundary: roll back if the flag tripped, else take a snapshot when one is due. ``pause`` is the
        clock's (it settles the device, so the flag is read for free, and keeps this work out of step timing).
        ``final`` (training has ended): read the flag now, and roll back if it is set on any rank, but take no
        snapshot. ``tripped`` and ``due``, when given, are the ranks' agreed :meth:`tripped` and :meth:`due`.
        Returns :data:`OK`, :data:`ROLLED_BACK` or :data:`DIVERGED` (the last good state is then restored)."""
        tripped = self.tripped() if tripped is None else tripped
        due = self.due(elapsed) if due is None else due
        if not (tripped or final or due):
            return OK
        resume = pause()
        try:
            if final:  # every rank checks, each with its own flag read now
                settled = self.any_rank(tripped or self.flagged())
            else:  # ``tripped`` is agreed; else the flag is read now, with the steps still held checked
                settled = tripped or self.any_rank(self.flagged())
            if settled:
                return self._roll_back(elapsed)
            if not final and not self.any_rank(bool(self.constant_steps)):  # never snapshot a (maybe) collapsed state
                self.snapshot, self.snapshot_at, self.streak = self.capture(), elapsed, 0
            return OK
        finally:
            resume()

    def flagged(self) -> bool:
        """Whether any step observed so far was bad: the steps held are checked first, and the device is waited for
        (for a decision that must not miss a step: a snapshot, a checkpoint, the final check)."""
        self.settle()
        return bool(self.bad)

    def _roll_back(self, elapsed: float) -> str:
        self.settle()  # the steps still held belong to the trajectory being discarded
        why = "collapse" if bool(self.collapsed) else "loss"
        if why == "collapse":
            self.snapshot, self.snapshot_at = self.first, self.first_at
        self.restore(self.snapshot)
        self.bad.zero_()
        self.constant_steps.zero_()
        self.collapsed.zero_()
        self._pending, self._unread = None, False
        self.streak += 1
        self.rollbacks.append({"time": round(elapsed, 4), "to_time": round(self.snapshot_at, 4), "why": why})
        if self.streak >= self.max_rollbacks:
            return DIVERGED
        self.scale_lr(COLLAPSE_LR_FACTOR if why == "collapse" else LR_FACTOR)
        self.snapshot_at = elapsed  # the restored state is the snapshot: the next one is due a period from now
        return ROLLED_BACK

    def state_dict(self) -> dict[str, Any]:
        self.settle()
        return {"level": float(self.level), "rollbacks": len(self.rollbacks), "reference": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The interrupted run's running level and its reference: the untrained model's loss. A resumed run measures
        its own first loss on the trained model, often near zero on data it has learnt, and a reference that small
        would make ordinary batch-to-batch noise count as an explosion (100x a level of about 1e-4 is a batch at
        0.01)."""
        self.reference = float(state.get("reference", self.reference))  # checkpoints before session 10 lack it
        self.level.fill_(state["level"])
