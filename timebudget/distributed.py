"""More than one process (torchrun): one deadline, one agreed stop, one plan sharded across the ranks, no hang.

Outside torchrun (no ``WORLD_SIZE`` above 1 in the environment) :func:`init` returns :class:`World`, whose methods
change nothing, so a single process runs exactly as before. Under torchrun it returns :class:`Group`: a
DistributedDataParallel run with NCCL on CUDA (one device per local rank) or gloo on the CPU. The trainer calls either
through the same narrow face, and every rank runs the same loop, so every rank calls the same collectives in the same
order:

- **one deadline**: the budget counts from torchrun's own start (the workers' parent process), aligned across ranks
  and machines to the earliest launch (:meth:`Group.align_start`);
- **one step, one stop**: every few steps (:data:`VOTE_EVERY_S` apart, one by one near the deadline) one small
  all-reduce on the CPU (:meth:`Group.agree_step`) stops every rank after the same step when any rank's clock (or a
  signal) says stop, rolls every rank back when any rank's divergence guard saw a bad loss, and carries rank 0's
  fraction of the window and its progress per step (from which every rank sets the same learning rate for each step
  until the next agreement), rank 0's time-based decisions (the guard's snapshot, a resumable checkpoint) and the
  steps until the next agreement, so the replicas stay identical;
- **one plan**: every rank computes the epoch plan from the same score table (losses all-gathered once per epoch,
  :meth:`Group.all_gather_losses`), the same seeded generator and rank 0's time (:meth:`Group.from_writer`); a
  fingerprint check (:meth:`Group.agree_plan`) replaces a plan that still differs (a strategy that decides from its
  own timings) by rank 0's; the subset is then split into equal shards (:meth:`Group.shard`), so every rank runs the
  same number of steps of one batch shape;
- **no hang**: every collective times out at the deadline plus :data:`GRACE_S`; a rank that died is seen at once
  (its connections close); either becomes one line (:class:`~timebudget.errors.PeerLost`) and a non-zero exit.

Only rank 0 writes the run folder. Control messages go through a gloo group on the CPU, so on CUDA the agreement adds
no host-device synchronisation; the per-epoch losses stay on the device (NCCL).
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import os
import signal as signals
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from . import artifacts
from .clock import process_start_time
from .errors import PeerLost, TimebudgetError, first_line

if TYPE_CHECKING:
    from .clock import BudgetClock

# How long past the deadline a rank may wait for the others before it gives up with one line.
GRACE_S = 5.0
# Per-step agreements come about this far apart (at least every step, at most a quarter of the steps that still fit):
# each is a blocking all-reduce, 6% of each rank's time when it ran after every step (two CPU ranks, 31 ms steps,
# session 10's profile). A rank's signal or bad loss waits at most this long to reach the others.
VOTE_EVERY_S = 0.25
# torchrun exits after its workers, and its interpreter's teardown of torch took 1.4-1.9 s on a loaded 2-core machine,
# 0.33-0.42 of the time the same interpreter took to import torch (four runs); on the quiet machine 0.84-0.97 s,
# 0.42-0.57 of its start-up (twelve runs, session 10, where the share of 0.4 left six of them 0.08-0.16 s late). So
# this share of torchrun's own start-up (from its start to the worker's, which the import of torch dominates) is kept
# free at the end of the budget, at most LAUNCHER_EXIT_MAX_S (a multi-node rendezvous waits for the other nodes), and
# `time torchrun ...` reads the budget, or a little less on a loaded machine.
LAUNCHER_EXIT_SHARE = 0.6
LAUNCHER_EXIT_MAX_S = 5.0

_SEED_STRIDE = 1_000_003  # ranks draw augmentations from different streams: seed + rank * stride


def launch_start(own_start: float, now: Callable[[], float] = time.monotonic) -> float:
    """When the run was launched: torchrun's own start (the parent of a torchrun worker), so that ``time torchrun
    ... --seconds S`` reads about S; ``own_start`` outside torchrun."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return own_start
    return min(own_start, process_start_time(now, os.getppid()))


class Votes(NamedTuple):
    """What all ranks agreed after a step: ``stop`` and ``bad`` are true when any rank's are, ``signal`` is a stop
    signal any rank received (``None``: none), ``snapshot`` and ``save`` are rank 0's (decisions taken by its clock)."""

    stop: bool
    signal: str | None = None
    bad: bool = False
    snapshot: bool = False
    save: bool = False


class World:
    """One process: every method is the identity, and the run is exactly the single-process run."""

    size = 1
    rank = 0
    backend: str | None = None
    launcher_exit_s = 0.0  # time the launcher needs to exit after this process, kept free at the end of the budget
    signal: str | None = None  # a stop signal any rank received, as the last agreement carried it

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the run folder (rank 0)."""
        return self.rank == 0

    def attach(self, clock: "BudgetClock") -> None:
        """The clock whose progress rank 0 shares at every agreement."""

    def align_start(self, start: float, now: Callable[[], float]) -> float:
        return start

    def place(self, device: torch.device) -> torch.device:
        return device

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm's running statistics) in ``module`` on every rank, before an evaluation-mode
        forward pass on a rank other than 0."""

    def rank_batch(self, batch_size: int) -> int:
        """This rank's share of the (global) batch size."""
        return batch_size

    def seed(self, seed: int) -> int:
        """A per-rank seed for draws that should differ between ranks (augmentation)."""
        return seed + self.rank * _SEED_STRIDE

    def progress(self, local: float) -> float:
        """The fraction of the window the next step trains at: the same number on every rank."""
        return local

    def agree(
        self, stop: bool, signal: str | None = None, bad: bool = False, snapshot: bool = False, save: bool = False
    ) -> Votes:
        """This rank's votes after a step, agreed with every other rank's (see :class:`Votes`); a stop signal on any
        rank stops all of them."""
        self.signal = self.signal or signal
        return Votes(stop or self.signal is not None, self.signal, bad, snapshot, save)

    def agree_step(
        self, stop: bool, signal: str | None = None, bad: bool = False, snapshot: bool = False, save: bool = False
    ) -> Votes:
        """:meth:`agree` after a training step; under torchrun only every few steps (see :class:`Group`)."""
        return self.agree(stop, signal, bad, snapshot, save)

    def agree_stop(self, local_stop: bool) -> bool:
        """Whether every rank stops now: true when any rank's ``local_stop`` is."""
        return self.agree(local_stop).stop

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        return flag

    def gather(self, *values: float) -> list[tuple[float, ...]]:
        """Every rank's ``values``, in rank order, on every rank."""
        return [tuple(float(v) for v in values)]

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable: per-rank state for a checkpoint), in rank order, on every rank."""
        return [value]

    def from_writer(self, *values: float) -> tuple[float, ...]:
        """Rank 0's ``values`` on every rank (decisions that depend on time are rank 0's)."""
        return self.gather(*values)[0]

    def agree_plan(
        self, order: torch.Tensor, weights: torch.Tensor | None, refresh: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, bool]:
        """The plan every rank trains: its own when all ranks' are identical, else rank 0's. Returns the plan and
        whether it had to be replaced."""
        return order, weights, refresh, False

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``order``: equal parts on every rank (the last ``len % size`` positions are dropped)."""
        return order

    def all_gather_losses(self, index: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (index, loss) pairs, concatenated in rank order; all ranks pass the same number of pairs."""
        return index, losses

    def out_dir(self, path: Path) -> Path:
        """Rank 0's run folder."""
        return path

    def metrics_log(self, path: Path, sinks: Sequence[artifacts.Sink] = ()) -> artifacts.MetricsLog | "_NoLog":
        return artifacts.MetricsLog(path, sinks=sinks) if self.is_writer else _NoLog()

    def summary(self, steps: int, samples: int, train_s: float) -> dict[str, Any]:
        """The world's part of ``summary.json``: size, backend and each rank's steps, samples and training seconds."""
        per_rank = self.gather(steps, samples, train_s)
        return {"world_size": self.size, "backend": self.backend, "rank_steps": [int(r[0]) for r in per_rank],
                "rank_samples": [int(r[1]) for r in per_rank], "rank_train_s": [r[2] for r in per_rank],
                "launcher_exit_s": self.launcher_exit_s}

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn a lost peer into one line (:class:`PeerLost`); nothing to do for one process."""
        yield

    def close(self) -> None:
        """Release the process group this world created, if any."""


class _NoLog:
    """The metrics log of a rank that writes nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass


class Group(World):
    """``size`` processes started by torchrun, this one being ``rank``; built by :func:`init`."""

    def __init__(
        self, rank: int, size: int, local_rank: int, backend: str, timeout_s: float, owned: bool, launcher_exit_s: float
    ) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.size, self.local_rank, self.backend = rank, size, local_rank, backend
        self.timeout_s, self.owned, self.launcher_exit_s = timeout_s, owned, launcher_exit_s
        # Control messages (stop, progress, fingerprints) are small host values: a gloo group on the CPU, so that on
        # CUDA they never wait for the device. With gloo the default group serves both.
        self.control = None
        if backend == "nccl":
            self.control = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self.clock: BudgetClock | None = None
        self._agreed = torch.zeros(8, dtype=torch.float64)
        self._progress: float | None = None
        self._rate = 0.0  # rank 0's progress per step, as the last agreement carried it
        self._since = 0  # steps since the last agreement (progress advances by ``_rate`` per step)
        self._skip = 0  # steps left until the next per-step agreement
        self._interval_agreed = 1  # rank 0's interval, as the last agreement carried it

    # --- set-up ----------------------------------------------------------------------------------------------
    def attach(self, clock: "BudgetClock") -> None:
        self.clock = clock

    def align_start(self, start: float, now: Callable[[], float]) -> float:
        """The earliest launch of any rank, on this rank's clock: after a barrier every rank reads its clock at about
        the same instant, and the largest time since launch wins."""
        self.dist.barrier(group=self.control)
        t = now()
        elapsed = torch.tensor([t - start], dtype=torch.float64)
        self.dist.all_reduce(elapsed, op=self.dist.ReduceOp.MAX, group=self.control)
        return t - float(elapsed)

    def place(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP without its broadcast of rank 0's buffers before every forward pass (a blocking collective per step):
        training-mode BatchNorm uses the batch's statistics, rank 0's
        own buffers are the same either way, and they are what rank 0 evaluates and saves; another rank gets them by
        :meth:`sync_buffers` before it evaluates (the sharded refresh of stale scores). The gradients are views into
        DDP's communication buckets (``gradient_as_bucket_view``), which spares two copies of every gradient per step:
        on two CPU ranks the step rate rose 10-25% (the trainer zeroes gradients with ``set_to_none``, as DDP needs)."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if self.backend == "nccl" else None
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # torch >= 2.14
        no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
        return DistributedDataParallel(module, device_ids=device_ids, gradient_as_bucket_view=True, **no_sync)

    def sync_buffers(self, module: nn.Module) -> None:
        for buffer in module.buffers():
            self.dist.broadcast(buffer, src=0)

    def rank_batch(self, batch_size: int) -> int:
        if batch_size % self.size:
            up = -(-batch_size // self.size) * self.size
            raise TimebudgetError(
                f"batch_size {batch_size} does not split evenly across {self.size} processes (the batch size is the "
                f"global batch, each rank trains batch_size / {self.size}); use a multiple of {self.size}, e.g. {up}"
            )
        return batch_size // self.size

    # --- per step --------------------------------------------------------------------------------------------
    def progress(self, local: float) -> float:
        """Rank 0's progress as the last agreement carried it (after the previous step, or with the epoch's plan; a
        step right after a refresh of stale scores trains at the progress read before the refresh)."""
        if self._progress is None:
            raise RuntimeError("distributed: no agreed progress yet (agree_plan must run before the first step)")
        return min(1.0, self._progress + self._since * self._rate)

    def agree(
        self, stop: bool, signal: str | None = None, bad: bool = False, snapshot: bool = False, save: bool = False
    ) -> Votes:
        """One all-reduce (max) of eight numbers: the stop votes, the signals' numbers, the guard's flags, rank 0's
        progress (the others send -1) and rank 0's two decisions, its progress per step and the steps until the next
        per-step agreement (the others send 0)."""
        writer = self.is_writer
        agreed = self._agreed
        agreed[0], agreed[1], agreed[2] = float(stop), float(signals.Signals[signal]) if signal else 0.0, float(bad)
        agreed[3] = self._writer_progress()
        agreed[4], agreed[5] = float(writer and snapshot), float(writer and save)
        agreed[6], agreed[7] = (self.clock.progress_per_step(), self._interval()) if writer else (0.0, 0.0)
        self.dist.all_reduce(agreed, op=self.dist.ReduceOp.MAX, group=self.control)
        stop, number, bad, self._progress, snapshot, save, self._rate, interval = agreed.tolist()
        self._since, self._interval_agreed = 0, int(interval)
        if number and self.signal is None:
            self.signal = signals.Signals(int(number)).name
        return Votes(stop > 0 or self.signal is not None, self.signal, bad > 0, snapshot > 0, save > 0)

    def agree_step(
        self, stop: bool, signal: str | None = None, bad: bool = False, snapshot: bool = False, save: bool = False
    ) -> Votes:
        """:meth:`agree` after a training step, but only every few steps: in between every rank goes on without a
        collective (all ranks skip the same steps, as the last agreement set them) and advances rank 0's progress by
        its progress per step. A rank's own stop, signal or bad loss waits for the next agreement, at most about
        ``VOTE_EVERY_S`` away; the interval shrinks as the deadline nears, so the last steps agree one by one."""
        if self._skip > 0:
            self._skip -= 1
            self._since += 1
            return Votes(False)
        votes = self.agree(stop, signal, bad, snapshot, save)
        self._skip = self._interval_agreed - 1  # counted in steps only: an epoch's end agrees without resetting it
        return votes

    def _interval(self) -> int:
        """Rank 0's steps until the next per-step agreement: about ``VOTE_EVERY_S`` of steps, at most a quarter of
        those that still fit before the tail (so the interval shrinks to one step by the deadline, and steps would have
        to slow down 4x at once to overrun it), at least one."""
        assert self.clock is not None
        estimate = self.clock.step_estimate()
        steps = int(VOTE_EVERY_S / estimate) if estimate > 0 else 1
        return max(1, min(steps, self.clock.steps_that_fit() // 4))

    def any(self, flag: bool) -> bool:
        vote = torch.tensor([float(flag)], dtype=torch.float64)
        self.dist.all_reduce(vote, op=self.dist.ReduceOp.MAX, group=self.control)
        return bool(vote[0] > 0)

    def _writer_progress(self) -> float:
        if not self.is_writer:
            return -1.0
        if self.clock is None:
            raise RuntimeError("distributed: attach(clock) before training")
        return self.clock.progress()

    # --- per epoch and at the edges of the run ---------------------------------------------------------------
    def gather(self, *values: float) -> list[tuple[float, ...]]:
        mine = torch.tensor([float(v) for v in values], dtype=torch.float64)
        rows = [torch.empty_like(mine) for _ in range(self.size)]
        self.dist.all_gather(rows, mine, group=self.control)
        return [tuple(row.tolist()) for row in rows]

    def gather_objects(self, value: Any) -> list[Any]:
        rows: list[Any] = [None] * self.size
        self.dist.all_gather_object(rows, value, group=self.control)
        return rows

    def agree_plan(
        self, order: torch.Tensor, weights: torch.Tensor | None, refresh: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, bool]:
        """One all-gather of each rank's plan fingerprint (sizes and hashes of order, weights and refresh) and rank
        0's progress; in the rare case that a rank's plan differs, rank 0's plan is broadcast to all."""
        prints = self.gather(*_fingerprint(order), *_fingerprint(weights), *_fingerprint(refresh),
                             self._writer_progress())
        self._progress, self._since = prints[0][-1], 0
        if all(row[:-1] == prints[0][:-1] for row in prints):
            return order, weights, refresh, False
        writer = prints[0]
        order = self._broadcast(order, int(writer[0]), torch.int64, order.device)
        weights = None if writer[2] < 0 else self._broadcast(weights, int(writer[2]), torch.float32, _device(weights))
        refresh = None if writer[4] < 0 else self._broadcast(refresh, int(writer[4]), torch.int64, _device(refresh))
        return order, weights, refresh, True

    def _broadcast(
        self, tensor: torch.Tensor | None, size: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """Rank 0's ``tensor`` (``size`` elements) on every rank; device tensors travel through the default group."""
        if self.is_writer and tensor is not None:
            buffer = tensor.to(dtype).contiguous()
        else:
            buffer = torch.empty(size, dtype=dtype, device=device)
        if self.backend == "nccl" and buffer.device.type != "cuda":
            self.dist.broadcast(buffer, src=0, group=self.control)
        else:
            self.dist.broadcast(buffer, src=0)
        return buffer

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        per_rank = len(order) // self.size
        if per_rank == 0:
            raise TimebudgetError(f"an epoch's subset holds {len(order)} samples, fewer than the {self.size} processes")
        return order[self.rank: per_rank * self.size: self.size]

    def all_gather_losses(self, index: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One all-gather, on the losses' device: index and loss packed as two float64 rows (indices below 2^53 are
        exact)."""
        packed = torch.stack([index.to(losses.device, non_blocking=True).double(), losses.double()])
        rows = [torch.empty_like(packed) for _ in range(self.size)]
        self.dist.all_gather(rows, packed)
        both = torch.cat(rows, dim=1)
        return both[0].long(), both[1].float()

    def out_dir(self, path: Path) -> Path:
        box: list[Any] = [str(path)]
        self.dist.broadcast_object_list(box, src=0, group=self.control)
        return Path(box[0])

    # --- failure and the end ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            if not _lost_peer(exc):
                raise
            text = str(exc).lower()
            cause = (f"a collective waited {self.timeout_s:.0f} s, past the deadline"
                     if "timed out" in text or "timeout" in text else "its connection to another rank closed")
            raise PeerLost(
                f"rank {self.rank} of {self.size}: another rank died or stalled ({cause}); stopping. The rank that "
                f"failed first says why in its own output. ({type(exc).__name__}: {first_line(exc)[:160]})"
            ) from None

    def close(self) -> None:
        """Destroy the process group once nothing holds it: a DDP module still alive in a reference cycle would
        outlive its group, and gloo's teardown then aborts the process (seen once as SIGABRT at exit)."""
        if self.owned and self.dist.is_initialized():
            gc.collect()
            self.dist.destroy_process_group()


def _device(tensor: torch.Tensor | None) -> torch.device:
    return tensor.device if tensor is not None else torch.device("cpu")


def _fingerprint(tensor: torch.Tensor | None) -> tuple[float, float]:
    """(number of elements, a 48-bit hash of the bytes) of a tensor, exact in float64; (-1, 0) for ``None``."""
    if tensor is None:
        return -1.0, 0.0
    data = tensor.detach().contiguous().cpu().numpy().tobytes()
    return float(tensor.numel()), float(int.from_bytes(hashlib.blake2b(data, digest_size=6).digest(), "little"))


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says that a collective failed because another rank is gone or silent."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        marker in text for marker in ("gloo/", "NCCL", "Connection reset", "Connection closed", "Timed out",
                                      "timeout caused pair closure")  # the last: gloo closing a pair at its timeout
    )


def init(device: str, budget_s: float, start: float, now: Callable[[], float] = time.monotonic) -> World:
    """The world this process runs in: :class:`World` outside torchrun, else a :class:`Group` joined through
    torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). Every
    collective times out ``GRACE_S`` after the deadline counted from ``start``."""
    launcher_exit_s = 0.0
    if "TORCHELASTIC_RUN_ID" in os.environ:
        launcher_start_up = max(0.0, process_start_time(now) - start)
        launcher_exit_s = min(LAUNCHER_EXIT_SHARE * launcher_start_up, LAUNCHER_EXIT_MAX_S)
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        world = World()
        world.launcher_exit_s = launcher_exit_s
        return world
    import torch.distributed as dist

    missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise TimebudgetError(f"WORLD_SIZE is {size} but {', '.join(missing)} is not set: launch with torchrun")
    local_rank = _env_int("LOCAL_RANK", 0)
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda and torch.cuda.is_available() else "gloo"
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise TimebudgetError(f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                                  "start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device("cuda", local_rank)
    timeout_s = max(0.0, budget_s - (now() - start)) + GRACE_S
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    elif dist.get_backend() != backend:
        raise TimebudgetError(f"the process group already uses {dist.get_backend()}; this run needs {backend}")
    return Group(dist.get_rank(), dist.get_world_size(), local_rank, backend, timeout_s, owned, launcher_exit_s)


def _env_int(key: str, default: int) -> int:
    value = os.environ.get(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise TimebudgetError(f"{key} must be an integer (torchrun sets it), got {value!r}") from None
