"""One client's work in one round, without Flower: its share of the data, the round's time budget, training with
:func:`timebudget.train` from the global weights and its own score table, and the fixed-epoch baseline.

The ClientApp (``client``) only moves weights and metrics in and out of Flower messages around these functions, so
they are tested on their own. No flwr import here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from .. import artifacts, checkpoint, config as config_module, data, models, sampler, strategies
from ..batches import Batches
from ..trainer import RunHooks, build_optimizer, evaluate, per_sample_loss, resolve_defaults, train
from .partition import indices, parse_scheme
from .settings import SETUP_FILE, NodeSettings, RunSettings, last_setup, node_dir, refuse_early

MIN_PARTITION = 2  # BatchNorm cannot train on a client with one sample


def client_bundle(bundle: data.DataBundle, run: RunSettings, node: NodeSettings,
                  split: str = "train") -> data.DataBundle:
    """``bundle`` with its ``split`` ("train" or "test") cut to this client's partition (the same scheme and seed on
    every client, so the partitions are disjoint and cover the data)."""
    dataset = getattr(bundle, split)
    labels = data.labels(dataset).numpy() if bundle.task == "classification" else np.zeros(len(dataset), dtype=int)
    keep = indices(labels, node.partition_id, node.num_partitions, parse_scheme(run.partition), run.seed, MIN_PARTITION)
    if isinstance(dataset, data.ArrayDataset):
        index = torch.as_tensor(keep)
        part: Any = data.ArrayDataset(dataset.x[index], dataset.y[index])
    else:
        part = Subset(dataset, keep.tolist())
    return dataclasses.replace(bundle, **{split: part})


def slowed(speed: float, now: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A step wrapper that makes a device ``1 / speed`` times slower: after each step it sleeps ``1 / speed - 1``
    times what the step took (measured on the host: on CUDA, launches are asynchronous and this undercounts)."""

    def wrap(step: Callable[..., Any]) -> Callable[..., Any]:
        if speed >= 1.0:
            return step

        def slow_step(*args: Any) -> Any:
            t0 = now()
            out = step(*args)
            sleep((1.0 / speed - 1.0) * (now() - t0))
            return out

        return slow_step

    return wrap


def round_schedule(server_round: int, rounds: int, decay: str) -> Callable[[float], float] | None:
    """``federation``: one linear decay over all rounds, round r of R (1-based) running from ``1 - (r-1)/R`` to
    ``1 - r/R`` of ``lr``; ``round``: ``None``, the run's own schedule, which decays to zero within each round."""
    if decay != "federation":
        return None
    first, last = 1.0 - (server_round - 1) / rounds, 1.0 - server_round / rounds
    return lambda p: max(0.0, first + (last - first) * p)


@dataclass
class RoundResult:
    """What a client sends back: the new weights and the metrics the server records."""

    weights: dict[str, torch.Tensor]
    metrics: dict[str, float]


STRATEGY_FILE = "strategy.pt"  # a client round's strategy bookkeeping at its end, next to the run's scores.pt


def previous(folder: Path, server_round: int, name: str) -> Any:
    """The file ``name`` this client saved in its latest earlier round that has it (``scores.pt``:
    the score table; ``STRATEGY_FILE``: the strategy's bookkeeping), if any."""
    for r in range(server_round - 1, 0, -1):
        path = folder / f"round_{r:03d}" / name
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
    return None


def carry(fresh: Any, earlier: Any) -> Any:
    """A strategy's state for a new round: the ``earlier`` round's bookkeeping over samples (its tensors and lists of
    tensors: ``random``'s used-sample mask, the noisy filter's streaks and exclusions, ``selective``'s marks) over the
    ``fresh`` strategy's per-run values (numbers counted in this run's progress, such as when to refit next)."""
    if isinstance(fresh, dict) and isinstance(earlier, dict):
        return {key: carry(value, earlier.get(key)) for key, value in fresh.items()}
    tensors = isinstance(earlier, list) and all(isinstance(v, torch.Tensor) for v in earlier)
    return earlier if isinstance(earlier, torch.Tensor) or (tensors and earlier) else fresh


class StrategyCarry:
    """The trainer's ``strategy`` hook for one client round: loads the bookkeeping of the client's earlier round into
    the strategy the run builds, and keeps the strategy so its state can be saved when the round ends."""

    def __init__(self, earlier: dict[str, Any] | None) -> None:
        self.earlier = earlier
        self.strategy: strategies.Strategy | None = None

    def __call__(self, strategy: strategies.Strategy, device: torch.device) -> None:
        self.strategy = strategy
        if self.earlier is not None:
            strategy.load_state_dict(checkpoint.to_device(carry(strategy.state_dict(), self.earlier), device))

    def save(self, folder: Path) -> None:
        if self.strategy is not None:
            state = checkpoint.to_device(self.strategy.state_dict(), torch.device("cpu"))
            artifacts.save_torch(folder / STRATEGY_FILE, state)


def train_config(run: RunSettings, seconds: float, out: Path, smoothing: float | None = None
                 ) -> config_module.Config:
    """The client's :class:`~timebudget.config.Config` for one round: the run's data, model, strategy (the trainer's
    default unless the run names one) and overrides, and the label smoothing the server resolved for the federation
    (``settings.SMOOTHING_KEY``) where it sent one."""
    values: dict[str, Any] = dict(config_module.parse_override(item) for item in run.overrides.split())
    values.update(seconds=seconds, data=run.data, seed=run.seed, quiet=True, out=str(out))
    if smoothing is not None:
        values["label_smoothing"] = smoothing  # checked with the run's other values: a bad one is one line
    for key in ("strategy", "data_dir", "model"):
        if getattr(run, key):
            values[key] = getattr(run, key)
    return config_module.apply(values, source="run config")


def train_round(weights: dict[str, torch.Tensor], run: RunSettings, node: NodeSettings, server_round: int,
                cap_s: float, start: float, reply_s: float, now: Callable[[], float] = time.monotonic,
                entered: float | None = None, smoothing: float | None = None) -> RoundResult:
    """Train ``weights`` on this client's partition with :func:`timebudget.train` until ``start + cap_s - reply_s``
    (``reply_s``: what sending the reply costs, so it reaches the server by ``start + cap_s``), or after about
    ``run.max_local_passes`` passes (:func:`pass_cap`), from the score table of the client's previous round. Raises
    :class:`BudgetTooSmall` when the cap cannot hold the start-up, one step, the tail and the reply. ``entered``: when
    the handler was entered, to measure what it costs before training; ``smoothing``: the server's label smoothing."""
    folder = node_dir(run, node)
    refuse_early(folder, now() - start, cap_s, reply_s, server_round)
    last = last_setup(folder)
    carried = StrategyCarry(previous(folder, server_round, STRATEGY_FILE))
    config = train_config(run, cap_s - reply_s, folder / f"round_{server_round:03d}", smoothing)
    hooks = RunHooks(subset=lambda b: client_bundle(b, run, node), weights=weights,
                     scores=previous(folder, server_round, "scores.pt"),
                     schedule=round_schedule(server_round, run.rounds, run.lr_decay), wrap_step=slowed(node.speed),
                     strategy=carried,
                     budget=pass_cap(run.max_local_passes, last.get("pass_s") if last else None))
    called = now()
    result = train(config, start=start, now=now, hooks=hooks)
    carried.save(result.out_dir)
    s = result.summary
    setup = {"import_s": called - (called if entered is None else entered),
             "setup_s": s["startup_s"] - (called - start),
             "step_s": s["calibration"]["step_s"][-1], "tail_s": s["tail_reserved_s"],
             "pass_s": pass_seconds(s)}
    artifacts.write_json(folder / SETUP_FILE, setup)
    return RoundResult(
        {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        {"samples": float(s["samples_trained"]), "train-seconds": float(s["elapsed_s"]),
         "loss": last_loss(result.out_dir), "partition-id": float(node.partition_id),
         "num-examples": float(s["samples_trained"] if run.weighting == "work" else s["n_train"]),
         "passes": float(s["passes"]), "first-step-seconds": float(s["startup_s"]),
         "tail-start-seconds": float(s["phase_starts"]["tail"])},
    )


def pass_seconds(summary: dict[str, Any]) -> float | None:
    """A run's seconds per pass over its data: its training phase (the steps and the loop's own costs: scoring,
    logging, snapshots) over the passes it made; ``None`` when it made none."""
    phases = summary["phase_starts"]
    return (phases["tail"] - phases["training"]) / summary["passes"] if summary["passes"] > 0 else None


def pass_cap(passes: float, last_pass_s: float | None) -> Callable[[dict[str, float]], float] | None:
    """The trainer's ``budget`` hook for a client that trains at most about ``passes`` passes over its data a round
    (``None``: no cap, train until the deadline). After calibration the run's seconds become what is already spent,
    the passes and the tail (with its margin); a pass takes what the client's last round measured (``last_pass_s``: its
    steps and the loop's own costs), or in its first round ``steps_per_pass`` times the calibrated step (the loop's
    own per-pass work not counted: a first round's count is rougher). The learning rate then decays to zero by those
    passes, the client answers early, and the deadline still bounds the round."""
    if not passes:
        return None

    def budget(measured: dict[str, float]) -> float:
        pass_s = last_pass_s or measured["steps_per_pass"] * measured["step_s"]
        return measured["elapsed_s"] + passes * pass_s + measured["reserve_s"]

    return budget


def last_loss(run_dir: Path) -> float:
    """The training loss of the run's last step record (NaN when it logged none)."""
    loss = math.nan
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "step":
            loss = record["loss"]
    return float(loss)


def fixed_epochs(weights: dict[str, torch.Tensor], run: RunSettings, node: NodeSettings, epochs: int,
                 now: Callable[[], float] = time.monotonic, smoothing: float | None = None) -> RoundResult:
    """Flower's quickstart client, for comparison: ``epochs`` passes over the partition at a constant learning rate,
    however long they take. Same data, model, optimizer, loss and step speed as the timebudget client; no clock."""
    t0 = now()
    cfg = train_config(run, 1.0, Path(run.out), smoothing)
    bundle = client_bundle(data.load(cfg.data, cfg.data_dir, cfg.image_size), run, node)
    cfg = resolve_defaults(cfg, bundle)
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, bundle.input_shape, bundle.num_outputs, bundle.kind)
    model.load_state_dict(weights)
    optimizer, loss_fn = build_optimizer(cfg, model), per_sample_loss(cfg, bundle.task)
    batches = Batches(bundle.train, torch.device("cpu"), bundle.input_shape)
    generator = torch.Generator().manual_seed(cfg.seed)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(model(x), y).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    step = slowed(node.speed, now)(step)
    samples, loss = 0, torch.tensor(math.nan)
    model.train()
    for _ in range(epochs):
        order = sampler.epoch_order(len(batches), generator)
        for x, y, _ in batches.iterate(sampler.batches(order, cfg.batch_size)):
            loss = step(x, y)
            samples += len(y)
    return RoundResult({k: v.detach().cpu() for k, v in model.state_dict().items()},
                       {"samples": float(samples), "train-seconds": now() - t0, "loss": float(loss),
                        "partition-id": float(node.partition_id), "num-examples": float(samples),
                        "passes": float(epochs)})


def local_metrics(weights: dict[str, torch.Tensor], run: RunSettings, node: NodeSettings) -> dict[str, float]:
    """The weights' test metrics on this client's share of the test split (Flower's client-side evaluation)."""
    cfg = train_config(run, 1.0, Path(run.out))
    loaded = data.load(cfg.data, cfg.data_dir, cfg.image_size)
    bundle = client_bundle(loaded, run, node, split="test")
    cfg = resolve_defaults(cfg, bundle)
    model = models.build(cfg.model, bundle.input_shape, bundle.num_outputs, bundle.kind)
    model.load_state_dict(weights)
    batches = Batches(bundle.test, torch.device("cpu"), bundle.input_shape)
    return {**evaluate(model, batches, bundle, 256), "num-examples": float(len(batches))}
