"""The training loop: ``train(config) -> TrainResult``, the one call the CLI, benchmarks and tests all make.

The loop itself is plain PyTorch. Around it, the budget clock decides when to stop, the time schedule sets the
learning rate from the fraction of the window used, the strategy picks each epoch's subset, and the score table
records every per-sample loss. Before training starts, a calibration measures one step (compiling it, if asked), a
partial evaluation and a checkpoint serialisation, so the tail is reserved from measurements and a budget that cannot
fit is refused before anything is written.

Per step the loop does no host-device synchronisation and no work that grows with the data set: losses stay on the
device, listed per step (no copy) and joined once per log record and once per epoch, when one vectorised scatter
writes them to the score table; on CUDA the clock reads step ends from events a few steps late, and a logged loss is
read one record late.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import (accel, artifacts, augment, checkpoint, checks, config as config_module, data, distributed, guard,
               lr_finder, models, sampler, schedules, startup, strategies)
from . import progress, tensorboard_sink
from .averaging import EMA
from .batches import Batches
from .clock import BudgetClock
from .config import Config
from .errors import BudgetTooSmall, TimebudgetError, first_line
from .preemption import Preemption
from .scores import ScoreTable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RunHooks:
    """How a caller that runs ``train`` repeatedly (a federated client, one call per round) shapes one run, without
    the loop knowing why: ``subset`` maps the loaded bundle (e.g. to this client's partition), ``weights`` and
    ``scores`` are the state to start from instead of a fresh model and an empty score table, ``schedule`` replaces
    the configured learning-rate schedule (a multiplier of ``lr`` by window fraction), ``wrap_step`` wraps the
    optimizer step (e.g. to slow it down on purpose), ``strategy`` is called with the built strategy and the
    device (e.g. to load its bookkeeping from an earlier run), and ``budget`` is called after calibration with what it
    measured (``elapsed_s``, ``step_s``, ``steps_per_pass``, ``reserve_s``) and returns the run's seconds, at most the
    configured ones (e.g. to stop after a number of passes: the learning rate then decays by then). Every field is
    optional; ``RunHooks()`` changes nothing. Single-process runs only (not under torchrun)."""

    subset: Callable[[data.DataBundle], data.DataBundle] | None = None
    weights: dict[str, torch.Tensor] | None = None
    scores: dict[str, torch.Tensor] | None = None
    schedule: schedules.Schedule | None = None
    wrap_step: Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]] | None = None
    strategy: Callable[[strategies.Strategy, torch.device], None] | None = None
    budget: Callable[[dict[str, float]], float] | None = None


@dataclass
class TrainResult:
    out_dir: Path
    summary: dict[str, Any]
    model: nn.Module
    config: Config
    is_writer: bool = True  # False on the ranks of a torchrun job that write nothing


# --- set-up ------------------------------------------------------------------------------------------------------
SMOOTHING = 0.1  # the usual recipe value
SMOOTHING_MIN_BALANCE = 0.15  # smooth only where the rarest class has at least this share of the largest one's rows


def default_smoothing(bundle: data.DataBundle, copies: torch.Tensor | None = None) -> float:
    """Label smoothing for tabular classification whose classes are not strongly imbalanced; none otherwise.

    Why (session 18, development draws only; README "Session 18"): with the MLP it gained 1-3 points on clean, noisy
    and duplicated sets and kept a longer budget from losing accuracy on a set of few distinct items, but on classes
    shrinking geometrically it lost as the imbalance grew: rarest/largest 0.63, 0.39, 0.23 gained +1.4, +1.5, +0.6 at
    30 passes, 0.075 lost -1.9; inside the gap (session 19) 0.150 gained +1.4 and +0.5 at 10 and 30 passes, 0.107
    +0.0 and -0.4, so the threshold sits at the last measured gain. Images keep plain cross-entropy: with the ``cnn``
    on distorted 16x16 digits it lost 0.5 point at 16 and 48 s (session 19, a development draw, 10 seeds).

    ``copies`` (each row's number of near copies, where near-duplicate sampling is on) counts a row as ``1 / copies``
    of its item, so the balance is that of the distinct items the run trains, not of the copying (session 21: on
    balanced digits copied by Zipf's law the rows' rarest/largest fell to 0.12-0.15 on 8 of 291 development draws,
    the rule turned smoothing off, and smoothing gained 2.5 points there at 2 passes, README "Session 21").
    """
    if bundle.task != "classification" or bundle.kind != "tabular":
        return 0.0
    labels = checks.labels_in_memory(bundle.train)
    if labels is None or int(labels.min()) < 0:
        return 0.0  # a dataset whose labels need every sample loaded is not scanned for this; bad labels: checks says
    weights = None if copies is None else 1.0 / copies.double()
    counts = torch.bincount(labels.long().flatten(), weights)
    counts = counts[counts > 0]
    return SMOOTHING if float(counts.min()) >= SMOOTHING_MIN_BALANCE * float(counts.max()) else 0.0


def resolve_defaults(config: Config, bundle: data.DataBundle) -> Config:
    """Fill the fields left at ``None`` with values that suit this data (a careful hand-written loop's choices).

    The batch is :func:`default_batch`, clamped to the training set; the learning rate is :func:`lr_finder.rule_lr`
    (capped linear scaling), which the run may lower after its range test; the warm-up is chosen after calibration
    (``default_warmup``).

    AdamW regression decays its weights by 1.0, not 0.01 (session 18, README "Session 18"): at 0.01 the test error
    grew from 10 to 30 passes, so a longer budget bought a worse model. Label smoothing: :func:`default_smoothing`.
    """
    n = len(bundle.train)
    optimizer = config.optimizer or ("sgd" if bundle.kind == "image" else "adamw")
    batch_size = lr_finder.clamp_batch(config.batch_size or default_batch(bundle.kind, n), n)
    weight_decay = 5e-4 if optimizer == "sgd" else 0.05 if bundle.task == "classification" else 1.0
    eval_every = config.eval_every
    if eval_every is None:
        eval_every = 0.0 if config.seconds < 300 else config.seconds / 10
    loss = config.loss
    if loss == "auto":
        loss = "cross_entropy" if bundle.task == "classification" else "mse"
    return dataclasses.replace(
        config,
        optimizer=optimizer,
        batch_size=batch_size,
        lr=config.lr or lr_finder.rule_lr(optimizer, batch_size, bundle.task),
        weight_decay=weight_decay if config.weight_decay is None else config.weight_decay,
        label_smoothing=default_smoothing(bundle) if config.label_smoothing is None else config.label_smoothing,
        augment=bundle.augment if config.augment is None else config.augment,
        eval_every=eval_every,
        loss=loss,
        model=config.model or models.default(bundle.kind, bundle.task),
    )


def default_batch(kind: str, n_train: int) -> int:
    """Images: 64 below 5,000 training samples, else 128. Tables: 16 below 500, 32 below 1,000, else 64.

    A tabular MLP's step costs little more at 64 than at 128 samples, so the smaller batch buys nearly twice the
    updates per second, and its gradient noise regularises: at equal seconds (``benchmarks/defaults.py``, seeds 0-2)
    batch 64 against 128 gave MAE 0.576 against 0.596 on ``regression`` and 75.8% against 74.9% on ``classification``,
    and on 353 diabetes patients batch 32 against 64 gave MAE 53.8 against 55.3. A few hundred samples overfit within
    tens of passes, where the noise of a small batch matters most: on diabetes (seeds 0-5, interleaved) batch 16
    against 32 gave MAE 47.8 against 49.5 at 1 s, 49.4 against 52.5 at 2 s and 52.9 against 53.6 at 4 s.
    """
    if kind == "image":
        return 64 if n_train < 5000 else 128
    return 16 if n_train < 500 else 32 if n_train < 1000 else 64


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weights only: BatchNorm and bias parameters are not decayed."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    options = accel.optimizer_options(decay + rest)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, **options)
    return torch.optim.AdamW(groups, lr=config.lr, **options)


def per_sample_loss(config: Config, task: str) -> LossFn:
    """A loss with ``reduction="none"``: one value per sample, which the score table records."""
    if task == "classification":
        if config.loss != "cross_entropy":
            raise TimebudgetError(f"loss {config.loss!r} does not suit classification; use cross_entropy")
        return lambda out, y: F.cross_entropy(out, y, reduction="none", label_smoothing=config.label_smoothing)
    if config.loss == "cross_entropy":
        raise TimebudgetError("loss 'cross_entropy' needs integer class targets; this data has float targets (mse, l1)")
    elementwise = F.mse_loss if config.loss == "mse" else F.l1_loss
    return lambda out, y: elementwise(out.float(), y.view_as(out).float(), reduction="none").flatten(1).mean(1)


# --- evaluation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    bundle: data.DataBundle,
    batch_size: int,
    max_batches: int | None = None,
    tta: bool = False,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, float]:
    """Test metrics in the data's own units: accuracy for classification, MAE and RMSE for regression.

    ``tta`` averages the predictions for each image and its mirror image (test-time flips).
    """
    was_training = model.training
    model.eval()
    chunks = list(torch.arange(len(batches)).split(batch_size))[:max_batches]
    correct = torch.zeros((), device=batches.device)
    abs_err = torch.zeros((), device=batches.device, dtype=torch.float64)
    sq_err = torch.zeros((), device=batches.device, dtype=torch.float64)
    count = 0
    for x, y, _ in batches.iterate(chunks):
        with autocast():
            out = model(x)
            if tta and x.ndim == 4:
                out = (out + model(x.flip(3))) / 2
        if bundle.task == "classification":
            correct += (out.argmax(1) == y).sum()
            count += len(y)
        else:
            diff = (out - y.view_as(out)).double() * bundle.target_std
            abs_err += diff.abs().sum()
            sq_err += diff.square().sum()
            count += diff.numel()
    model.train(was_training)
    if bundle.task == "classification":
        return {"accuracy": float(correct) / max(count, 1)}
    return {"mae": float(abs_err) / max(count, 1), "rmse": math.sqrt(float(sq_err) / max(count, 1))}


# --- the run -----------------------------------------------------------------------------------------------------
def default_out_dir(config: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    name = Path(config.data).stem.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{stamp}-{name}-{config.strategy}"


_UNCOLLECTED = False  # a run in this process ended by an exception, and its objects may not have been collected


@contextlib.contextmanager
def collector_frozen() -> Iterator[None]:
    """Leave the objects that exist before the run (torch's modules, the caller's) out of Python's cyclic garbage
    collections during it (``gc.freeze``), and give them back after. Why: with torch imported a process tracks about
    385,000 objects, and a full collection inside a run took 0.23-0.26 s on the 2-core CPU, 0.2 ms with them frozen
    (session 22). Python starts one when enough objects have survived, at a moment nobody chooses; one falling in a
    calibration probe or a step is a stall the clock must believe, so in a short budget it reserves that much more for
    the tail, or stops training for good (session 22's table had two runs of 3,060 stall about 0.3 s so, one in a
    probe and one in a step; that these were collections is likely, not shown). A caller that froze objects itself
    keeps its own arrangement.

    The run's own objects are collected when it ends, while the older ones are still frozen (5-8 ms; 70 ms after a
    process's first run, whose lazy imports leave many objects; the command line, whose process ends with its run,
    freezes everything before it and so never pays it): a run's objects hold reference cycles, and garbage that the
    next run's freeze caught was given back to the oldest generation, which Python then hardly ever collected, so a
    process that trained run after run (the benchmark, a Flower client) kept every run's data and model: 24 MB a
    run, until two budget-accuracy tables of about 560 runs each exhausted 24 GiB (session 23). A run ended by an
    exception is still referenced by its traceback when this exits; the next run in the process then collects
    everything once before it freezes (about a quarter of a second)."""
    global _UNCOLLECTED
    if gc.get_freeze_count():
        yield
        return
    if _UNCOLLECTED:
        gc.collect()
        _UNCOLLECTED = False
    gc.freeze()
    try:
        yield
    except BaseException:
        _UNCOLLECTED = True
        raise
    else:
        gc.collect()
    finally:
        gc.unfreeze()


def train(
    config: Config,
    start: float | None = None,
    now: Callable[[], float] = time.monotonic,
    hooks: RunHooks | None = None,
) -> TrainResult:
    """Train for ``config.seconds`` of wall time counted from ``start`` (default: now) and write the run folder.

    Returns once ``summary.json`` is on disk, before the deadline; its ``status`` is ``completed``, ``interrupted``
    (a stop signal: SIGTERM, SIGINT or SIGUSR1) or ``diverged``. Raises :class:`~timebudget.preemption.Interrupted`
    when a stop signal comes before training starts (nothing is written), and :class:`TimebudgetError` (before any
    training) for bad input and :class:`BudgetTooSmall` when the budget cannot fit start-up, one step and the tail.
    With ``config.resume`` set, continues that run folder (see :mod:`timebudget.checkpoint`).
    """
    config = config.validate()
    state = None
    if config.resume:
        config, state = checkpoint.resume_config(config)
    start = now() if start is None else start
    world = distributed.init(config.device, config.seconds, start, now)
    with world.guard(), Preemption() as preemption, collector_frozen():
        clock = BudgetClock(config.seconds, start=world.align_start(start, now), now=now,
                            margin_s=config.margin + world.launcher_exit_s)
        world.attach(clock)
        if state is not None:
            checkpoint.check_world(config, state, world.size)
        if config.out and not config.resume:
            if (Path(config.out) / "summary.json").exists():
                raise TimebudgetError(f"--out {config.out!r} already holds a run (summary.json); choose a new folder, "
                                      "or continue an interrupted run with --resume")
            checks.output_folder(config.out)
        if not world.is_writer:
            config = dataclasses.replace(config, quiet=True)
        with progress.Progress(clock, config.quiet) as view:
            run = _Run(config, clock, world, hooks or RunHooks(), preemption)
            view.phase("calibration")
            try:
                run.calibrate()
            except BudgetTooSmall as exc:
                if state is None:
                    raise
                raise BudgetTooSmall(f"--resume {config.resume!r}: {exc}; give the resumed run more: --seconds S") \
                    from None
            run.choose_lr()
            if state is not None:
                checkpoint.restore(run, state)
            preemption.begin_training()
            run.open_folder()
            run.loop(view)
            view.phase("tail")
            result = run.finish()
        # the run's objects become garbage here (the live view holds its status method), to be collected before the
        # older ones are unfrozen; under torchrun DDP's reducer also goes before its process group (gloo can abort when
        # torn down under it)
        del run, view
    world.close()
    return result


class _Run:
    """One run in four stages: set-up (here), :meth:`calibrate`, :meth:`loop` and :meth:`finish`.

    Set-up and calibration write nothing, so bad input and a budget too small leave no run folder behind.
    """

    def __init__(self, config: Config, clock: BudgetClock, world: distributed.World, hooks: RunHooks,
                 preemption: Preemption) -> None:
        self.clock, self.now, self.world, self.preemption = clock, clock.now, world, preemption
        self.startup = startup.Startup(clock.start, clock.now)
        if config.tensorboard:
            tensorboard_sink.check_available()
        torch.manual_seed(config.seed)
        self.device = device = world.place(accel.resolve_device(config.device))
        accel.check_precision(config.precision, device)
        self.bundle = bundle = data.load(config.data, config.data_dir, config.image_size)
        if hooks.subset is not None:
            self.bundle = bundle = hooks.subset(bundle)
        self.hooks = hooks
        self.user_lr = config.lr
        smoothing_auto = config.label_smoothing is None
        self.warnings = checks.dataset(bundle, config.batch_size)  # the batch asked for, before it is clamped
        self.config = config = resolve_defaults(config, bundle)
        for warning in self.warnings:
            print(f"timebudget: warning: {warning}", file=sys.stderr)
        self.startup.mark("data")
        self.model = models.build(config.model, bundle.input_shape, bundle.num_outputs, bundle.kind).to(device)
        if hooks.weights is not None:
            self.model.load_state_dict(hooks.weights)
        if hooks.wrap_step is not None:
            self.step = hooks.wrap_step(self.step)  # type: ignore[method-assign]
        fmt = accel.memory_format(self.model, config.channels_last, bundle.kind == "image", device,
                                  faster_nhwc=config.model in models.FASTER_NHWC_ON_CPU)
        self.channels_last = fmt == torch.channels_last
        self.startup.mark("model")
        self.rank_batch = world.rank_batch(config.batch_size)
        if config.compile:
            self.startup.use_compile_cache(config.compile_cache, startup.cache_key(
                config.model, bundle.input_shape, self.rank_batch, config.precision, self.channels_last,
                device.type))
        self.train_module = accel.compile_module(world.wrap(self.model), config.compile)  # DDP under torchrun
        self.startup.mark("compile" if config.compile else "model")
        self.optimizer = build_optimizer(config, self.model)
        self.startup.mark("optimizer")
        self.autocast = accel.autocast(config.precision, device)
        self.scaler = accel.grad_scaler(config.precision, device)
        self.train_batches, self.test_batches = (
            Batches(split, device, bundle.input_shape, config.data_path, config.num_workers, fmt)
            for split in (bundle.train, bundle.test)
        )
        resident = self.train_batches.path == "resident"
        self.startup.mark("setup")
        copies = strategies.find_copies(config, self.train_batches.x if resident else None)
        self.startup.mark("copies")
        if smoothing_auto and copies.counts is not None:  # near-duplicate sampling trains the distinct items
            self.config = config = dataclasses.replace(config, label_smoothing=default_smoothing(bundle, copies.counts))
        self.loss_fn = per_sample_loss(config, bundle.task)
        self.eval_batch = max(256, 4 * config.batch_size)
        self.n = len(self.train_batches)
        self.data_facts = checkpoint.fingerprint(self)  # once: every checkpoint, the calibration's probe too, holds it
        self.order_gen = torch.Generator().manual_seed(config.seed)
        # on the device: no copy per step; under torchrun each rank draws its own augmentations
        self.aug_gen = torch.Generator(device).manual_seed(world.seed(config.seed + 1))
        self.scores = ScoreTable(self.n, device=device)
        if hooks.scores is not None:
            self.scores.load_state_dict(hooks.scores)
        self.strategy = strategies.build(config, bundle.task, bundle.num_outputs, copies)
        if hooks.strategy is not None:
            hooks.strategy(self.strategy, device)
        schedule = hooks.schedule or schedules.build(config.schedule, config.warmup or 0.0, config.step_milestones)
        self.schedule = schedules.TimeSchedule(self.optimizer, config.lr, schedule)
        self.averaged: EMA | None = None
        self.pending_step: tuple[dict[str, Any], accel.HostCopy] | None = None
        clock.timeline = accel.timeline(device, clock.now)
        self.drop_partial = config.compile or device.type == "cuda"  # one batch shape: no recompiles, no re-tuning
        self.steps = self.epochs = self.samples = 0
        self.seconds_scoring = 0.0
        self.subsets = sampler.SubsetTally()
        self.last_eval: dict[str, Any] | None = None
        self.outcome, self.signal = "running", None  # completed, interrupted (by signal) or diverged at the end
        self.guard: guard.DivergenceGuard | None = None
        self.cursor: checkpoint.Cursor | None = None  # the epoch in progress, when training stopped within it
        self.epoch_order = torch.empty(0, dtype=torch.long)  # the epoch's whole plan, before sharding
        self.rank_states: list[dict[str, Any]] | None = None  # every rank's own state, gathered for a checkpoint
        self.stop_progress: float | None = None
        self.parts: list[dict[str, Any]] = []  # the earlier parts of a resumed run
        self.part_start = (0, 0, 0.0)  # steps, samples and training seconds when this part began
        self.checkpoint_s = 0.0  # this part's crash-safe checkpoints (--checkpoint-every), inside the budget
        self.startup.mark("setup")

    # --- the pieces every stage uses -----------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """One optimizer step; returns the batch's per-sample losses (detached, on the device)."""
        if self.config.augment and x.ndim == 4:
            x = augment.crop_flip(x, self.aug_gen)
        with self.autocast():
            losses = self.loss_fn(self.train_module(x), y)
        loss = (losses * weights).mean() if weights is not None else losses.mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return losses.detach()

    @torch.no_grad()
    def forward_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A batch's per-sample losses from a forward pass without gradient (Selective-Backprop's candidates)."""
        with self.autocast():
            return self.loss_fn(self.train_module(x), y).float()

    def status(self) -> progress.Status:
        """What the live view shows, read at its refreshes only."""
        return progress.Status(lr=self.schedule.lr, samples=self.samples, epoch=self.epochs,
                               kept_fraction=self.subsets.fraction_last)

    def final_model(self) -> nn.Module:
        """What is evaluated and saved: the weight average once it has started, else the trained model."""
        return self.averaged.module if self.averaged is not None else self.model

    def test_metrics(self, max_batches: int | None = None) -> dict[str, float]:
        return evaluate(self.final_model(), self.test_batches, self.bundle, self.eval_batch, max_batches,
                        self.config.tta, self.autocast)

    def checkpoint(self, cursor: checkpoint.Cursor | None = None) -> dict[str, Any]:
        """The whole run's resumable state (see :mod:`timebudget.checkpoint`)."""
        return checkpoint.run_state(self, cursor or self.cursor)

    # --- calibration: measure a step, the evaluation and the checkpoint before committing to the budget --------
    def calibrate(self) -> None:
        config, clock, now = self.config, self.clock, self.now
        self.phase_starts = {"start-up": 0.0, "calibration": clock.elapsed()}
        first = sampler.batches(torch.randperm(self.n, generator=torch.Generator().manual_seed(config.seed)),
                                self.rank_batch)
        ((px, py, _),) = self.train_batches.iterate(first[:1])
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        checks.finite_batch(f"--data {config.data!r}", px, py)
        self.step_times: list[float] = []
        first_losses: list[torch.Tensor] = []
        for _ in range(3 if config.compile else 2):  # cold first step (and compilation); the last is representative
            t0 = now()
            try:
                first_losses.append(self.step(px, py, None).mean())
            except Exception as exc:
                what = "compiling the training step" if config.compile else "a training step"
                raise TimebudgetError(
                    f"{what} failed for model {config.model!r} on a batch of shape {tuple(px.shape)}: "
                    f"{type(exc).__name__}: {first_line(exc)}"
                ) from None
            accel.synchronize(self.device)
            self.step_times.append(now() - t0)
        self.model.load_state_dict(state)
        self.optimizer.state.clear()
        initial_loss = float(first_losses[0])
        if not math.isfinite(initial_loss):
            raise TimebudgetError(
                f"the loss of model {config.model!r} on the first training batch of {config.data!r} is {initial_loss}: "
                "check the data and the model's forward"
            )
        self.guard = guard.DivergenceGuard(initial_loss, self.device, lambda: checkpoint.training_state(self),
                                           lambda state: checkpoint.restore_training(self, state), self.scale_lr,
                                           every_s=guard.snapshot_interval(config.seconds, config.snapshot_every),
                                           any_rank=self.world.any, classes=self.bundle.num_outputs
                                           if self.bundle.task == "classification" else None)
        test_chunks = math.ceil(len(self.test_batches) / self.eval_batch)
        probe_batches = min(test_chunks, 2)
        self.test_metrics(max_batches=1)  # warm: the first evaluation pays for allocations and kernel selection
        t0 = now()
        self.test_metrics(max_batches=probe_batches)
        self.eval_s = (now() - t0) * test_chunks / probe_batches
        self.tail_probe = _TailProbe(
            lambda: evaluate(self.final_model(), self.test_batches, self.bundle, 64, max_batches=1), now
        )
        t0 = now()
        blob = artifacts.serialize({"ckpt": self.checkpoint(), "scores": self.scores.state_dict()})
        with tempfile.TemporaryFile() as fh:
            fh.write(blob)
        self.save_s = now() - t0
        # Every rank decides alike: the slowest rank's step sets the pace, and the tail and the time are rank 0's.
        rows = self.world.gather(self.step_times[-1], self.eval_s, self.save_s, clock.elapsed())
        step_s = max(row[0] for row in rows)
        _, self.eval_s, self.save_s, elapsed = rows[0]
        clock.measure_tail(self.eval_s + self.save_s + 0.01)
        clock.seed_step(step_s)
        minimum = elapsed + step_s + clock.reserve_s
        if minimum > config.seconds:
            raise BudgetTooSmall(
                f"--seconds {config.seconds:g} is too small: start-up took "
                f"{elapsed - sum(self.step_times):.2f} s, one training step takes {step_s:.3f} s "
                f"(the first {self.step_times[0]:.2f} s) and the final evaluation and checkpoint {clock.reserve_s:.2f} "
                f"s; the minimum for this data and model here is about {math.ceil(minimum * 1.2)} s"
            )
        if self.hooks.budget is not None:  # a shorter run, never shorter than the minimum just measured
            seconds = self.hooks.budget({"elapsed_s": elapsed, "step_s": step_s, "reserve_s": clock.reserve_s,
                                         "steps_per_pass": math.ceil(self.n / self.rank_batch)})
            clock.shorten(max(minimum, seconds))
            self.config = config = dataclasses.replace(config, seconds=clock.budget_s)
        self.startup.mark("calibration")

    def choose_lr(self) -> None:
        """The peak learning rate (the rule's, guarded by a range test when it fits) and the warm-up, when the user
        left them unset; the range test's seconds pass on the budget's clock like any other."""
        config, clock = self.config, self.clock
        # rank 0's timings on every rank, so all decide alike; under torchrun no range test (its steps are collective)
        window_s = config.seconds - clock.elapsed() - clock.reserve_s
        step_s, window_s = self.world.from_writer(self.step_times[-1], window_s)
        enabled = config.lr_range_test and self.world.size == 1
        self.lr_choice = lr_finder.choose(self.user_lr, config.lr, enabled, step_s, window_s, self.range_test)
        warmup = config.warmup
        if warmup is None:
            warmup = schedules.default_warmup(step_s, window_s - self.lr_choice.seconds)
        self.config = config = dataclasses.replace(config, lr=self.lr_choice.lr, warmup=warmup)
        schedule = self.hooks.schedule or schedules.build(config.schedule, warmup, config.step_milestones)
        self.schedule = schedules.TimeSchedule(self.optimizer, config.lr, schedule)

    def range_test(self) -> lr_finder.RangeTest:
        """:func:`lr_finder.range_test` on fresh batches from the initial weights, which are restored afterwards."""
        chunks = lr_finder.test_chunks(self.n, self.config.batch_size, self.config.seed)

        def step(batch: tuple[torch.Tensor, ...], lr: float) -> float:
            schedules.set_lr(self.optimizer, lr)
            return float(self.step(batch[0], batch[1], None).float().mean())

        with lr_finder.restored(self.model, self.optimizer, self.scaler):
            return lr_finder.range_test(step, iter(self.train_batches.iterate(chunks)), self.config.lr, self.now)

    # --- the run folder ----------------------------------------------------------------------------------------
    def open_folder(self) -> None:
        config = self.config
        self.out_dir = self.world.out_dir(Path(config.out) if config.out else default_out_dir(config))
        self.config = config = dataclasses.replace(config, out=str(self.out_dir))
        self.checkpoint_dir = self.out_dir / "checkpoints"
        metrics = self.out_dir / "metrics.jsonl"
        if self.world.is_writer:  # under torchrun only rank 0 writes
            with checks.writing(self.out_dir):
                checks.output_folder(self.out_dir)
                self.out_dir.mkdir(parents=True, exist_ok=True)
                if not config.resume:  # a resumed run keeps the folder's config.yaml: the run's own settings
                    artifacts.write_text(self.out_dir / "config.yaml", config_module.dump(config))
                if config.save_checkpoints:
                    self.checkpoint_dir.mkdir(exist_ok=True)
        sinks: list[artifacts.Sink] = []
        if config.tensorboard and self.world.is_writer:
            sinks.append(tensorboard_sink.TensorBoardSink(self.out_dir / "tensorboard", self.clock.elapsed()))
        if config.resume and self.world.is_writer:  # continue the interrupted run's log
            self.log: artifacts.MetricsLog | Any = artifacts.MetricsLog(metrics, sinks=sinks, append=True)
        else:
            self.log = self.world.metrics_log(metrics, sinks)
        if config.resume:
            self.log.write({"event": "resume", "step": self.steps, "samples": self.samples, "epoch": self.epochs,
                            "progress": self.clock.progress_from, "budget_s": config.seconds,
                            "time": round(self.clock.elapsed(), 4)})
        self.startup.mark("folder")

    # --- the loop ----------------------------------------------------------------------------------------------
    def loop(self, view: progress.Progress) -> None:
        config, clock, now, device = self.config, self.clock, self.now, self.device
        checkpoint_every = 1.0 / (config.save_checkpoints + 1)
        next_checkpoint = checkpoint_every if config.save_checkpoints else math.inf
        average_from = config.average_from if config.average_from is not None else math.inf
        next_eval = config.eval_every or math.inf
        self.model.train()
        clock.start_training()
        view.phase("training", self.status)
        self.phase_starts["training"] = clock.training_started - clock.start
        self.log.write({"event": "training", "time": round(clock.elapsed(), 4), "budget_s": config.seconds,
                        "phase_starts": dict(self.phase_starts), "window_end_s": clock.window_end - clock.start})
        resumable_every = checkpoint.interval(config) if self.world.is_writer else 0.0
        next_resumable = clock.elapsed() if resumable_every else math.inf  # the first at once: a kill finds one
        self.guard.start(clock.elapsed())
        stop = self.world.agree(clock.should_stop(), self.preemption.signal).stop
        # a strategy that chooses within the batch (Selective-Backprop) steps itself; under torchrun none does
        own_step = self.strategy.backprop(self.step, self.forward_losses, self.rank_batch) if self.world.size == 1 \
            else None
        while not stop:
            # per step; joined per log record and per epoch, not copied per step (a resumed epoch starts with its
            # trained part's losses as one entry)
            order, chunks, weights, epoch_losses, done = self.plan_epoch()
            logged = len(epoch_losses)  # steps of this epoch already logged
            for x, y, idx in self.train_batches.iterate(chunks):
                p = self.world.progress(clock.progress())  # under torchrun: rank 0's, so every replica steps alike
                lr = self.schedule.apply(p)
                w = weights[idx.to(device, non_blocking=True)] if weights is not None else None
                losses = own_step(x, y, w, idx) if own_step is not None else self.step(x, y, w)
                self.guard.observe(losses)
                epoch_losses.append(losses)
                done += len(idx)
                self.steps += 1
                self.samples += len(idx) * self.world.size  # all ranks' samples: equal shards
                if p >= average_from:
                    if self.averaged is None:
                        self.averaged = EMA(self.model, config.ema_decay)
                    else:
                        self.averaged.update()
                if self.steps % config.log_every == 0:
                    self.log_step(lr, torch.cat(epoch_losses[logged:]))
                    logged = len(epoch_losses)
                view.tick(losses)
                # under torchrun one small collective every few steps: all ranks stop, roll back, snapshot and save
                # alike
                votes = self.world.agree_step(clock.step_done(), self.preemption.signal, self.guard.tripped(),
                                              self.guard.due(clock.elapsed()),
                                              clock.elapsed() >= next_resumable and self.save_fits())
                if votes.stop or self.guarded(votes):
                    stop = True
                    break
                if self.tail_probe.load_changed(slowdown := clock.slowdown()):
                    self.retime_tail(slowdown)
                if p >= next_checkpoint:
                    if self.world.is_writer:
                        resume = clock.pause()
                        artifacts.save_torch(self.checkpoint_dir / f"step_{self.steps:08d}.pt", self.checkpoint())
                        resume()
                    next_checkpoint += checkpoint_every
                if votes.save:
                    self.save_resumable(order, weights, epoch_losses, done)
                    next_resumable = clock.elapsed() + resumable_every
                if self.world.is_writer and clock.elapsed() >= next_eval:
                    self.last_eval = self.periodic_eval() or self.last_eval
                    next_eval = clock.elapsed() + config.eval_every
            t0 = now()
            joined = torch.cat(epoch_losses) if epoch_losses else torch.empty(0, device=device)
            index, joined = self.world.all_gather_losses(order[:done], joined)  # this rank's part is order[:done]
            if stop:  # within the epoch: a resume continues it, with the score table as it was before it
                self.cursor = checkpoint.Cursor(self.epochs, self.epoch_order, weights, [joined], done,
                                                self.scores.state_dict())
            index = index.to(device, non_blocking=True)
            self.scores.record(index, self.guard.clean(joined, self.scores.average[index]), self.steps)
            self.seconds_scoring += now() - t0
            if len(epoch_losses) > logged:
                self.log_step(self.schedule.lr, torch.cat(epoch_losses[logged:]))
            self.write_step_log()
            self.epochs += 1
            self.log.flush()
            stop = self.world.agree(stop or clock.should_stop(), self.preemption.signal).stop
        clock.stop_training()
        if self.outcome == "running" and not self.guarded(final=True):
            self.signal = self.world.signal or self.preemption.signal  # any rank's (all stopped for it), or a late one
            self.outcome = "interrupted" if self.signal else "completed"
        self.stopped_at, self.stop_progress = now(), clock.progress()
        self.log.flush()

    def guarded(self, votes: distributed.Votes | None = None, final: bool = False) -> bool:
        """The divergence guard's check at a step boundary, with the ranks' agreed ``votes`` (``final``: at the end of
        training); True when the run has diverged, its last good state restored."""
        clock = self.clock
        tripped, due = (votes.bad, votes.snapshot) if votes is not None else (None, None)
        verdict = self.guard.check(clock.elapsed(), clock.pause, final, tripped, due)
        if verdict != guard.OK:
            self.log.write({"event": "rollback", "step": self.steps, "time": round(clock.elapsed(), 4),
                            "lr_scale": self.schedule.base_lr / self.config.lr, "diverged": verdict == guard.DIVERGED})
        if verdict == guard.DIVERGED:
            self.outcome = "diverged"
        return verdict == guard.DIVERGED

    def scale_lr(self, factor: float) -> None:
        self.schedule.base_lr *= factor

    def save_fits(self) -> bool:
        """Whether a resumable checkpoint fits before the tail (rank 0's clock decides for all ranks)."""
        clock = self.clock
        return clock.now() + self.save_s * clock.load + clock.step_estimate() <= clock.window_end

    def save_resumable(self, order: torch.Tensor, weights: torch.Tensor | None, epoch_losses: list[torch.Tensor],
                       done: int) -> None:
        """A crash-safe checkpoint (``checkpoint_every``) of the epoch in progress (this rank's ``order`` trained up
        to ``done``), unless the guard has seen a bad loss since its last check; its cost is wall time, so it is
        charged to the budget. Every rank calls it (the ranks' losses and states are gathered); rank 0 writes."""
        clock = self.clock
        resume = clock.pause()
        t0 = clock.now()
        losses = torch.cat(epoch_losses) if epoch_losses else torch.empty(0, device=self.device)
        _, losses = self.world.all_gather_losses(order[:done], losses)
        cursor = checkpoint.Cursor(self.epochs, self.epoch_order, weights, losses, done)  # every rank's losses
        self.rank_states = self.world.gather_objects(checkpoint.rank_state(self, self.guard.flagged()))
        if self.world.is_writer and not any(state["bad"] for state in self.rank_states):
            with checks.writing(self.out_dir):
                artifacts.save_torch(self.out_dir / checkpoint.NAME, self.checkpoint(cursor))
            self.checkpoint_s += clock.now() - t0
            self.log.write({"event": "checkpoint", "step": self.steps, "time": round(clock.elapsed(), 4),
                            "save_s": round(clock.now() - t0, 4)})
        resume()

    def plan_epoch(self) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None, list[torch.Tensor], int]:
        """The strategy's plan for the next epoch, as this rank's order, its batches, per-sample weights, the epoch's
        losses so far and how many samples of it are trained (none unless a resumed run continues its epoch).
        Planning and re-scoring count against the budget, not as step time. Under torchrun every rank plans from the
        same scores and rank 0's time, and trains its equal shard of the subset."""
        if self.cursor is not None:  # a resumed run first ends the epoch it stopped in
            cursor, self.cursor = self.cursor, None
            self.epoch_order = cursor.order
            return cursor.rest(self.rank_batch, self.drop_partial, self.device, self.world.shard, self.world.rank)
        clock, n = self.clock, self.n
        resume = clock.pause()
        t0 = self.now()
        throughput = self.samples / clock.train_s if clock.train_s > 0 else None
        affordable = throughput * max(0.0, clock.window_end - self.now()) if throughput else None
        room = clock.window_end - clock.now() - clock.step_estimate()
        progress, affordable, room = self.world.from_writer(
            clock.progress(), -1.0 if affordable is None else affordable, room)
        plan = self.strategy.plan(strategies.EpochContext(self.epochs, progress, self.scores, self.order_gen,
                                                          affordable if affordable >= 0 else None))
        if plan.kept(n) == 0:
            raise RuntimeError(f"strategy {self.strategy.name!r} selected no samples in epoch {self.epochs}")
        order = sampler.epoch_order(n, self.order_gen, plan.mask, plan.repeats)
        order, plan.weights, plan.refresh, replaced = self.world.agree_plan(order, plan.weights, plan.refresh)
        if plan.refresh is not None and len(plan.refresh):
            self.refresh(plan.refresh, room)
        kept, self.epoch_order = len(order), order  # the whole plan, before sharding: what a checkpoint keeps
        order = self.world.shard(order)
        chunks = sampler.batches(order, self.rank_batch, self.drop_partial)
        weights = plan.weights.to(self.device) if plan.weights is not None else None
        self.seconds_scoring += self.now() - t0
        resume()
        record = {"event": "epoch", "epoch": self.epochs, "time": round(clock.elapsed(), 4), "kept": kept,
                  "kept_fraction": kept / n, "phase": plan.phase}
        if replaced:
            record["plan_replaced_by_rank0"] = True
        self.subsets.add(kept, n, plan.phase)
        self.log.write(record)
        return order, chunks, weights, [], 0

    def log_step(self, lr: float, losses: torch.Tensor) -> None:
        """Make a step record with the mean of ``losses`` (the steps since the last record). Its loss is copied to
        the host without waiting and read at the next record, long arrived by then, which is when the record is
        written."""
        loss = accel.HostCopy(losses.mean())
        self.write_step_log()
        self.pending_step = ({"event": "step", "step": self.steps, "epoch": self.epochs,
                              "time": round(self.clock.elapsed(), 4), "lr": lr, "samples": self.samples}, loss)

    def write_step_log(self) -> None:
        """Write the step record waiting for its loss, if any."""
        if self.pending_step is None:
            return
        record, loss = self.pending_step
        self.pending_step = None
        record["loss"] = loss.get()
        self.log.write(record)

    @torch.no_grad()
    def refresh(self, index: torch.Tensor, room: float) -> None:
        """Re-measure the losses of ``index`` with a forward pass (no gradient), trimmed to what fits in half the
        ``room`` left before the tail at the calibrated evaluation speed; under torchrun each rank measures its
        shard and all ranks record all of them."""
        seconds_per_sample = self.eval_s / len(self.test_batches)
        index = index[:int(max(0.0, room * 0.5) * self.world.size / max(seconds_per_sample, 1e-9))]
        if len(index) < self.world.size:
            return
        self.world.sync_buffers(self.model)  # under torchrun: rank 0's BatchNorm statistics (DDP does not send them)
        self.model.eval()
        index = self.world.shard(index)
        chunks = list(index.split(self.eval_batch))
        losses = [self.loss_fn(self.model(x), y) for x, y, _ in self.train_batches.iterate(chunks)]
        self.scores.record(*self.world.all_gather_losses(index, torch.cat(losses)), self.steps)
        self.model.train()

    def periodic_eval(self) -> dict[str, Any] | None:
        """An evaluation during training, when it fits; its measured cost refines the reserve for the final one."""
        clock = self.clock
        if clock.now() + clock.tail_s + clock.step_estimate() > clock.window_end:
            return None
        resume = clock.pause()
        self.write_step_log()  # after the pause's sync: free, and the records stay in order
        t0 = clock.now()
        metrics = self.test_metrics()
        eval_s = clock.now() - t0
        resume()
        clock.measure_tail(eval_s + self.save_s + 0.01)
        record = {"event": "eval", "step": self.steps, "time": round(clock.elapsed(), 4), "eval_s": eval_s, **metrics}
        self.log.write(record)
        return record

    def retime_tail(self, slowdown: float) -> None:
        """The load changed: re-time the tail with the probe if it fits before the tail and in its share of the time,
        else assume the worst."""
        clock, probe = self.clock, self.tail_probe
        fits = clock.now() + probe.cost(slowdown) < clock.window_end - clock.step_estimate()
        at_stake = (self.eval_s + self.save_s) * (slowdown - clock.load)  # what assuming the worst would add
        retimed = fits and probe.affordable(clock.elapsed(), slowdown, at_stake)
        if retimed:
            resume = clock.pause()
            scale = probe.retime(slowdown)
            resume()
        else:
            scale = probe.assume(slowdown)
        clock.measure_tail((self.eval_s + self.save_s) * scale + 0.01, load=scale)
        self.log.write({"event": "load", "step": self.steps, "time": round(clock.elapsed(), 4),
                        "step_slowdown": round(slowdown, 3), "tail_scale": round(scale, 3), "retimed": retimed,
                        "reserve_s": round(clock.reserve_s, 4)})

    # --- the tail: final evaluation, checkpoint, scores, summary ----------------------------------------------
    def final_metrics(self) -> dict[str, float] | None:
        """The final evaluation; after a stop signal only if it fits in the grace the signal leaves (``None``)."""
        clock = self.clock
        if self.outcome == "interrupted":
            end = min(clock.deadline, self.stopped_at + self.config.signal_grace) - clock.margin_s
            if clock.now() + (self.eval_s + self.save_s) * clock.load > end:
                return None
        return self.test_metrics()

    def finish(self) -> TrainResult:
        config, clock, n = self.config, self.clock, self.n
        world = self.world.summary(self.steps, self.samples // self.world.size, clock.train_s)
        self.rank_states = self.world.gather_objects(checkpoint.rank_state(self))  # for rank 0's checkpoint
        if not self.world.is_writer:  # under torchrun: the tail is rank 0's
            summary = {"steps": self.steps, "status": self.outcome, "signal": self.signal,
                       "rollbacks": self.guard.rollbacks, **world}
            return TrainResult(self.out_dir, summary, self.final_model(), config, False)
        tail_start = self.now()
        self.phase_starts["tail"] = tail_start - clock.start
        metrics = self.final_metrics()
        if metrics is not None and not all(math.isfinite(v) for v in metrics.values()):
            self.outcome = "diverged"  # a meaningless number is never reported as a result
        self.log.write({"event": "final", "step": self.steps, "time": round(clock.elapsed(), 4), **(metrics or {})})
        self.log.close()
        with checks.writing(self.out_dir):
            artifacts.save_torch(self.out_dir / checkpoint.NAME, self.checkpoint())
            artifacts.save_torch(self.out_dir / "scores.pt", self.scores.state_dict())
        summary = {
            "budget_s": config.seconds,
            "elapsed_s": None,
            "test_metrics": metrics,
            "samples_trained": self.samples,
            "steps": self.steps,
            "epochs": self.epochs,
            "passes": self.samples / n,
            "train_s": clock.train_s,
            "samples_per_s": self.samples / clock.train_s if clock.train_s > 0 else 0.0,
            "strategy": config.strategy,
            "strategy_stats": self.strategy.summary(),
            "device": str(self.device),
            "data": self.bundle.name,
            "data_path": self.train_batches.path,
            "task": self.bundle.task,
            "model": config.model,
            "precision": config.precision,
            "channels_last": self.channels_last,
            "n_train": n,
            "n_test": len(self.test_batches),
            "seconds_scoring": self.seconds_scoring,
            "samples_skipped": self.subsets.skipped,
            "fraction_seen": float(self.scores.seen.float().mean()),
            "subsets": self.subsets.summary(),  # each epoch's own: metrics.jsonl's "epoch" records
            "final_lr": self.schedule.lr,
            "lr_choice": self.lr_choice.to_dict(),
            "warmup": config.warmup,
            "startup_s": clock.training_started - clock.start,
            "startup": self.startup.summary(clock.training_started, self.step_times),
            "phase_starts": self.phase_starts,
            "window_end_s": clock.window_end - clock.start,
            "calibration": {"step_s": self.step_times, "eval_s": self.eval_s, "save_s": self.save_s},
            "tail_reserved_s": clock.reserve_s,
            "weights_averaged": self.averaged is not None,
            "periodic_eval": self.last_eval,
            **world,
            "torch": torch.__version__,
            "python": platform.python_version(),
            **checkpoint.accounts(self),
            "rollbacks": self.guard.rollbacks,
            "warnings": self.warnings,
        }
        summary["tail_s"] = self.now() - tail_start
        summary["elapsed_s"] = clock.elapsed()
        summary["parts"][-1]["elapsed_s"] = summary["elapsed_s"]
        summary["total"]["elapsed_s"] = sum(part["elapsed_s"] for part in summary["parts"])
        with checks.writing(self.out_dir):
            artifacts.write_json(self.out_dir / "summary.json", summary)
        return TrainResult(out_dir=self.out_dir, summary=summary, model=self.final_model(), config=config)


class _TailProbe:
    """Re-times the tail when the machine's load changes (a competing process starts or stops).

    A one-batch evaluation is timed at calibration (median of three); when the steps' slowdown moves by more than
    ``hysteresis`` since the last probe, the same batch is timed again and the tail estimate is scaled by the
    evaluation's own slowdown: scaling it by the steps' slowdown would over-reserve, since small steps suffer far
    more from competing threads than the evaluation does, and so the steps' slowdown bounds the scale. When the probe
    would not fit before the tail, or probing has had its ``share`` of the elapsed time and would cost more than the
    reserve the assumption adds (:meth:`affordable`), the steps' slowdown is assumed instead (cautious: the run ends
    early rather than late). The bound matters under busy-loop competitors on 2 cores, where one probe in a few is
    caught by the scheduler and reads 30x while the steps run at their usual speed: taken as is, it reserved seconds
    and ended a run that early.
    """

    def __init__(
        self, probe: Callable[[], object], now: Callable[[], float], hysteresis: float = 1.5, share: float = 0.02
    ) -> None:
        self.probe, self.now, self.hysteresis, self.share = probe, now, hysteresis, share
        self.reference = self._time()
        self.at_slowdown = 1.0
        self.spent = 0.0

    def _time(self) -> float:
        times = []
        for _ in range(3):
            t0 = self.now()
            self.probe()
            times.append(self.now() - t0)
        return max(sorted(times)[1], 1e-6)

    def load_changed(self, slowdown: float) -> bool:
        ratio = slowdown / self.at_slowdown
        return ratio > self.hysteresis or ratio < 1 / self.hysteresis

    def affordable(self, elapsed: float, slowdown: float, at_stake: float = 0.0) -> bool:
        """Whether probing now is worth its time: it keeps the time spent probing within ``share`` of ``elapsed``, or
        it costs less than ``at_stake``, the reserve that assuming the steps' slowdown instead would add. Early in a
        short run the share is a few milliseconds, and two steps caught by a hiccup (30-60x slower) then made the
        run assume a tail that much slower: it reserved more than the time left and stopped training for good."""
        cost = self.cost(slowdown)
        return self.spent + cost <= self.share * elapsed or cost < at_stake

    def cost(self, slowdown: float) -> float:
        """The predicted cost of :meth:`retime` under this slowdown."""
        return 3 * self.reference * max(1.0, slowdown)

    def retime(self, slowdown: float) -> float:
        """Time the probe again; return the tail's scale: the evaluation's slowdown relative to calibration, between 1
        and the steps' slowdown."""
        t0 = self.now()
        measured = self._time() / self.reference
        self.spent += self.now() - t0
        return self._scale(slowdown, min(measured, slowdown))

    def assume(self, slowdown: float) -> float:
        """No time to re-time: assume the tail slows down as much as the steps did (cautious)."""
        return self._scale(slowdown, slowdown)

    def _scale(self, slowdown: float, scale: float) -> float:
        self.at_slowdown = slowdown
        return max(1.0, scale)
