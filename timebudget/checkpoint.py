"""The whole run's state: what ``checkpoint.pt`` holds, how a resumed run is configured and restored, and the accounts.

``checkpoint.pt`` is the evaluated model (``model``, as before) plus everything a resume needs to continue exactly as
the interrupted run would have: the trained model when a weight average is evaluated, optimizer, weight average,
gradient scaler, score table, strategy and filter state, every RNG state, the epoch's order and position within it
(with the losses of its trained part, not yet in the score table), the schedule's position and learning-rate scale,
the divergence guard's running level, and the accounts of every part of the run. It holds only tensors, numbers,
strings, lists and dicts, so it loads with ``torch.load(path, weights_only=True)``; it is written atomically (temporary
file, then rename), so a ``kill -9`` at any moment leaves the previous complete one.

A resumed run (``timebudget train --resume RUN_DIR``) rebuilds the data and model from the saved config, calibrates
as any run does, then takes the state from here: the learning rate goes on from where it stopped (the clock's progress
starts at the saved value and reaches 1 at the end of the new window), and by default the new budget is what the
interrupted part left of its own.

Under torchrun rank 0 writes the one checkpoint, and every rank resumes from it (the run folder must be reachable from
every rank): the replicas' model and optimizer are identical, the score table is the same everywhere, and all ranks
stopped after the same step, so the epoch's whole plan and the samples each rank has trained of it (equal on every
rank) give each rank its shard's position back; the per-rank state (RNG streams, the epoch's losses) is gathered into
the checkpoint in rank order. A resume with another number of processes is refused in one line.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import config as config_module, sampler
from .averaging import EMA
from .config import Config
from .errors import TimebudgetError, first_line

if TYPE_CHECKING:
    from .trainer import _Run

FORMAT = 2  # the layout of the resumable state; a checkpoint without it cannot be resumed
READABLE = (1, 2)  # 1: before the subsets' tally, with a list of every epoch's record (read into a tally)
NAME = "checkpoint.pt"
AUTO_FROM_S = 600.0  # checkpoint_every=None: off below this budget, else every AUTO_SHARE of it
AUTO_SHARE = 0.1


@dataclass
class Cursor:
    """Where the run stands inside an epoch: its order, weights and the losses of the first ``done`` samples (the
    score table gets them when the epoch ends; given as the loop's per-step list, kept as one copied tensor).
    ``scores`` is the table before that, when it already holds them."""

    epoch: int
    order: torch.Tensor
    weights: torch.Tensor | None
    losses: torch.Tensor | list[torch.Tensor]
    done: int
    scores: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.losses, list):
            self.losses = torch.cat(self.losses) if self.losses else torch.empty(0)  # cat copies
        if self.scores is not None:  # a copy: on a CPU ``state_dict`` shares the live table's tensors
            self.scores = {key: value.clone() for key, value in self.scores.items()}

    def rest(
        self, batch_size: int, drop_partial: bool, device: torch.device,
        shard: Callable[[torch.Tensor], torch.Tensor] = lambda order: order, rank: int = 0,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None, list[torch.Tensor], int]:
        """The epoch as the trainer's plan gives it, continued: this rank's order (its ``shard`` of the epoch's),
        remaining batches, weights, the epoch's losses so far (the trained part's, as one entry) and how many samples
        that part is. ``order`` is the whole epoch's and ``losses`` every rank's trained part in rank order, ``done``
        samples each."""
        order = shard(self.order)
        chunks = sampler.batches(order, batch_size, drop_partial)
        skip = trained = 0
        while trained < self.done:
            trained += len(chunks[skip])
            skip += 1
        mine = torch.as_tensor(self.losses)[rank * self.done:(rank + 1) * self.done]
        losses = [mine.to(device)] if self.done else []
        weights = self.weights.to(device) if self.weights is not None else None
        return order, chunks[skip:], weights, losses, self.done

    def to_dict(self) -> dict[str, Any]:
        weights = None if self.weights is None else self.weights.cpu()
        return {"epoch": self.epoch, "order": self.order.cpu(), "done": self.done,
                "losses": torch.as_tensor(self.losses).cpu(), "weights": weights}


def interval(config: Config) -> float:
    """Seconds between resumable checkpoints (0: none before the final one)."""
    if config.checkpoint_every is not None:
        return config.checkpoint_every
    return 0.0 if config.seconds < AUTO_FROM_S else AUTO_SHARE * config.seconds


# --- the training state: in memory for the divergence guard, on disk for a resume --------------------------------
def training_state(run: _Run) -> dict[str, Any]:
    """A copy of model, optimizer, weight average and gradient scaler that later steps do not modify."""
    return {
        "model": _clone(run.model),
        "optimizer": copy.deepcopy(run.optimizer.state_dict()),
        "averaged": None if run.averaged is None else _clone(run.averaged.module),
        "scaler": run.scaler.state_dict(),
    }


def _clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def restore_training(run: _Run, state: Mapping[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))  # a copy: the steps must not write the snapshot
    if state["averaged"] is None:
        run.averaged = None
    else:
        if run.averaged is None:
            run.averaged = EMA(run.model, run.config.ema_decay)
        run.averaged.module.load_state_dict(state["averaged"])
    if state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])


def rank_state(run: _Run, bad: bool = False) -> dict[str, Any]:
    """What differs between the ranks of a torchrun job and a checkpoint keeps per rank: the global and augmentation
    RNG streams (this rank's device's), and whether the divergence guard has seen a bad loss (``bad``)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "augment": run.aug_gen.get_state(), "bad": bad}
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.device)
    return state


def run_state(run: _Run, cursor: Cursor | None = None) -> dict[str, Any]:
    """The whole run as ``checkpoint.pt`` stores it."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "order": run.order_gen.get_state(),
                           "augment": run.aug_gen.get_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if run.world.size > 1 and run.rank_states is not None:  # every rank's own streams, in rank order
        rng["ranks"] = [{k: v for k, v in state.items() if k != "bad"} for state in run.rank_states]
    bundle, clock = run.bundle, run.clock
    training = training_state(run) if run.averaged is not None else None
    progress = run.stop_progress if run.stop_progress is not None else clock.progress()
    return {
        "format": FORMAT,
        "world_size": run.world.size,
        "model": run.final_model().state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "trained_model": None if training is None else training["model"],
        "averaged": run.averaged is not None,
        "scaler": run.scaler.state_dict(),
        "steps": run.steps,
        "epochs": run.epochs,
        "samples_trained": run.samples,
        "budget_s": run.config.seconds,
        "elapsed_s": clock.elapsed(),
        "rng": rng,
        "config": run.config.to_dict(),
        "data": {
            "task": bundle.task,
            "num_outputs": bundle.num_outputs,
            "input_shape": list(bundle.input_shape),
            "target_mean": bundle.target_mean,
            "target_std": bundle.target_std,
            **run.data_facts,
        },
        "scores": cursor.scores if cursor is not None and cursor.scores is not None else run.scores.state_dict(),
        "strategy": run.strategy.state_dict(),
        "guard": run.guard.state_dict() if run.guard is not None else None,
        "schedule": {"base_lr": run.schedule.base_lr, "progress": progress},
        "train_s": clock.train_s,
        "seconds_scoring": run.seconds_scoring,
        "subsets": run.subsets.state_dict(),
        "cursor": None if cursor is None else cursor.to_dict(),
        "parts": [*run.parts, part(run)],
    }


def fingerprint(run: _Run) -> dict[str, Any]:
    """Sizes and, for in-memory data, checksums: a resume on other data is refused rather than trained on. Taken once
    at set-up (``run.data_facts``), as the data do not change within a run: the sum over 4,000 rows of 784 features
    took 3 ms as a rule, but 16-98 ms in 1 of 12 calibrations of a 0.8 s budget on the shared 2-core machine
    (session 22), and when every checkpoint took it, the calibration's probe of the final save did too, so the tail's
    reserve grew by as much for the whole run."""
    facts: dict[str, Any] = {"n_train": run.n, "n_test": len(run.test_batches)}
    train = run.bundle.train
    x, y = getattr(train, "x", None), getattr(train, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        facts["checksum"] = [float(x.sum(dtype=torch.float64)), float(y.sum(dtype=torch.float64))]
    return facts


def part(run: _Run) -> dict[str, Any]:
    """This process's share of the run: its budget, the seconds it has used, the steps, samples and training time."""
    steps, samples, train_s = run.part_start
    record = {"budget_s": run.config.seconds, "elapsed_s": run.clock.elapsed(), "steps": run.steps - steps,
              "samples": run.samples - samples, "train_s": run.clock.train_s - train_s, "status": run.outcome}
    if run.signal is not None:
        record["signal"] = run.signal
    return record


def accounts(run: _Run) -> dict[str, Any]:
    """The summary's status and accounts of every part and the total."""
    parts = [*run.parts, part(run)]
    result: dict[str, Any] = {"status": run.outcome}
    if run.signal is not None:
        result["signal"] = run.signal
    result["parts"] = parts
    result["checkpoint_s"] = run.checkpoint_s
    result["total"] = {"elapsed_s": sum(p["elapsed_s"] for p in parts), "steps": run.steps,
                       "samples_trained": run.samples, "train_s": run.clock.train_s}
    return result


# --- resume ----------------------------------------------------------------------------------------------------
def load(run_dir: str | Path) -> dict[str, Any]:
    """The resumable state of ``run_dir``, or one line saying why there is none."""
    run_dir = Path(run_dir)
    flag = f"--resume {str(run_dir)!r}"
    if not run_dir.is_dir():
        raise TimebudgetError(f"{flag}: no such folder")
    path = run_dir / NAME
    if not path.is_file():
        raise TimebudgetError(f"{flag} is not a run folder with a checkpoint ({NAME} is missing); nothing to resume")
    summary = _summary(run_dir)
    if summary is not None and summary.get("status", "completed") == "completed":
        raise TimebudgetError(f"{flag}: the run has completed (summary.json); start a new run instead")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TimebudgetError(f"{flag}: {NAME} cannot be read: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise TimebudgetError(f"{flag}: {NAME} holds no resumable state (written by another timebudget version?)")
    if summary is not None and summary.get("steps") == state["steps"]:
        state["parts"][-1]["elapsed_s"] = summary["elapsed_s"]  # the tail after the checkpoint was used too
    return state


def _summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def resume_config(config: Config) -> tuple[Config, dict[str, Any]]:
    """The resumed run's config: the saved one, in its folder, with the caller's ``seconds`` (``None``: what the
    interrupted part left of its budget) and ``quiet``."""
    run_dir = str(config.resume)
    state = load(run_dir)
    try:
        saved = config_module.apply(state["config"], source=f"{NAME} config")
    except TimebudgetError as exc:
        raise TimebudgetError(f"--resume {run_dir!r}: {exc}") from None
    last = state["parts"][-1]
    seconds = config.seconds
    if seconds is None:
        seconds = last["budget_s"] - last["elapsed_s"]
        if seconds <= 0:
            raise TimebudgetError(
                f"--resume {run_dir!r}: nothing is left of the {last['budget_s']:g} s budget; give --seconds S"
            )
    resumed = dataclasses.replace(saved, seconds=seconds, quiet=config.quiet, out=run_dir, resume=run_dir)
    return resumed.validate(), state


def check_world(config: Config, state: dict[str, Any], size: int) -> None:
    """Refuse, in one line, a resume with another number of processes than the run was trained by: each rank's
    position is its shard of the epoch, which depends on that number."""
    saved = state.get("world_size", 1)
    if saved != size:
        def launch(n: int) -> str:
            return "one process (no torchrun)" if n == 1 else f"{n} processes (torchrun --nproc_per_node {n})"

        raise TimebudgetError(f"--resume {str(config.resume)!r}: the run was trained by {launch(saved)} and this "
                              f"launch has {size}; resume it with the same number: {launch(saved)}")


def restore(run: _Run, state: dict[str, Any]) -> None:
    """Put the saved state into a freshly set-up and calibrated run, after checking it belongs to this data and
    model."""
    where = f"--resume {run.config.resume!r}"
    saved, now = state["data"], {**run.data_facts, "num_outputs": run.bundle.num_outputs,
                                  "input_shape": list(run.bundle.input_shape)}
    for key, value in now.items():
        if saved.get(key) != value and not (key == "checksum" and _close(saved.get(key), value)):
            raise TimebudgetError(f"{where}: the checkpoint was made on other data ({key} {saved.get(key)} vs {value})")
    device = run.device
    training = {"model": state["trained_model"] or state["model"], "optimizer": state["optimizer"],
                "averaged": state["model"] if state["averaged"] else None, "scaler": state["scaler"]}
    try:
        restore_training(run, training)  # load_state_dict puts each tensor where its parameter is
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TimebudgetError(f"{where}: the checkpoint does not match model {run.config.model!r}: "
                              f"{first_line(exc)}") from None
    run.scores.load_state_dict(state["scores"])
    run.strategy.load_state_dict(to_device(state["strategy"], device))
    if run.guard is not None and state["guard"] is not None:
        run.guard.load_state_dict(state["guard"])
    rng = state["rng"]
    run.order_gen.set_state(rng["order"])  # the plan's: the same on every rank
    if "ranks" in rng:  # under torchrun: this rank's own streams
        mine = rng["ranks"][run.world.rank]
        torch.set_rng_state(mine["torch"])
        run.aug_gen.set_state(mine["augment"])
        if device.type == "cuda" and "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"], device)
    else:
        torch.set_rng_state(rng["torch"])
        run.aug_gen.set_state(rng["augment"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state_all(rng["cuda"])
    run.schedule.base_lr = state["schedule"]["base_lr"]
    run.clock.progress_from = state["schedule"]["progress"]
    run.clock.train_s = state["train_s"]
    run.steps, run.samples, run.epochs = state["steps"], state["samples_trained"], state["epochs"]
    run.seconds_scoring = state["seconds_scoring"]
    if state["format"] >= 2:
        run.subsets = sampler.SubsetTally.from_state(state["subsets"])
    else:
        for record in state["kept_log"]:
            run.subsets.add(record["kept"], run.n, record.get("phase", ""))
    cursor = state["cursor"]
    if cursor is not None:
        run.epochs = cursor["epoch"]
        run.cursor = Cursor(cursor["epoch"], cursor["order"], cursor["weights"], cursor["losses"].to(device),
                            cursor["done"])
    run.parts = [dict(p, status=p["status"] if p["status"] != "running" else "crashed") for p in state["parts"]]
    run.part_start = (run.steps, run.samples, run.clock.train_s)


def _close(a: Any, b: Any) -> bool:
    return isinstance(a, list) and len(a) == len(b) and all(math.isclose(u, v, rel_tol=1e-9) for u, v in zip(a, b))


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value
