"""The settings a federated run shares between the launcher, the ServerApp and every ClientApp, as Flower passes
them: run-wide ones in the run config (``flwr run --run-config``), per-device ones in each SuperNode's node config.

Flower's config values are flat scalars with dashed keys; these dataclasses are their typed face, so each side reads
the same names with the same defaults. No flwr import here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import BudgetTooSmall, TimebudgetError
from .partition import parse_scheme

MODES = ("timebudget", "epochs")
LR_DECAYS = ("round", "federation")
# what a reply's ``num-examples`` (FedAvg's weight) counts: ``work``, the samples it trained this round (a fast client
# that made 20 passes weighs 20 times its data); ``data``, its shard's size, as Flower's quickstart and FedAvg's paper
WEIGHTINGS = ("work", "data")
# The round's end on the server's wall clock: its ``time.time()`` when it sends the round plus the cap (the instant its
# timeout counts from), in every training message's config next to the cap (``round-seconds``). The client trains
# until this deadline less its reply reserve, so Flower's delivery, the SuperNode's wait between looks for messages
# (3 s in flwr 1.42, the launcher's ``--supernode-poll`` with ``supernode``), the per-message ClientApp process start
# and the imports all count against the round without being guessed.
# Clocks: processes on one host (the loopback launcher) share one clock, and NTP keeps hosts within milliseconds. A
# client whose clock reads behind the server's still starts the round at the latest at its own process start (the
# message's receipt); one ahead stops early. Either error lands in the reply trip the server measures (its seconds
# from send to receipt less the seconds the client says it used) and the client reserves in its next rounds.
DEADLINE_KEY = "deadline"
# The reply's trip: from the ClientApp's return to the server seeing the reply. In flwr 1.42 the ClientApp process
# pushes its reply to the SuperNode, which looks for finished replies every 0.5 s (the launcher's SuperNodes: every
# ``--supernode-poll``, and no 1 s back-off on the object pulls; 0.0 to 1.36 s measured at load 2 to 6) and sends it
# to the SuperLink, where
# the server polls every 0.1 s (``server.TimedGrid``): 0.35 to 0.5 s measured on loopback at load 1 on 2 cores, up
# to 2.8 s at load 14 when three clients replied at once. From the second round on, the server sends the longest trip
# it measured from any node (``REPLY_PATH_KEY`` in the round's config) and the client reserves ``REPLY_SAFETY`` times
# that plus ``REPLY_JITTER_S`` (the SuperNode's poll, which the measured trip may have caught at once). timebudget's
# ServerApp measures the trip before round 1 too (``server.measure_reply_paths``: a query the clients answer at once
# with as many bytes as a round's reply); a message without a measured trip (another ServerApp) gets the run's
# ``reply-reserve`` (``REPLY_RESERVE_S`` unless set). Any node's, not each node's own: under
# load the trips have a heavy tail (0.2 to 1.9 s at load 7 on 2 cores, median 0.45 s), and one node's first trip or
# two (0.46 s) let its next one (1.31 s) come late; a fleet with one slow link reserves for it everywhere, which costs
# the others that much training and no replies.
REPLY_PATH_KEY = "reply-path-seconds"
REPLY_RESERVE_S = 2.0
REPLY_SAFETY = 1.5
REPLY_JITTER_S = 0.5
# The federation's label smoothing, in every training message's config: the server resolves it once from the training
# split it loads (``trainer.default_smoothing``, or the run's override), so every client optimises the same loss. A
# client deciding from its own shard would smooth where its share of the classes is balanced and not where a non-IID
# partition skewed it (the rule turns smoothing off when the rarest class has under 15% of the largest one's rows),
# and FedAvg would average models trained on two objectives. A message without it (another ServerApp): the client's.
SMOOTHING_KEY = "label-smoothing"
MAX_LOCAL_PASSES = 2.0
ERROR_PREFIX = "timebudget client "  # an error reply's reason: "timebudget client K: why", K its partition id
SETUP_FILE = "setup.json"  # a client's last measured costs before training, to refuse a round it cannot fit at once


@dataclass
class RunSettings:
    """Run-wide: what to train, for how many rounds, how long each round may take, and how the clients train."""

    out: str = ""
    rounds: int = 3
    round_seconds: float = 10.0
    clients: int = 2
    data: str = "digits"
    data_dir: str = ""
    model: str = ""
    strategy: str = ""  # empty: the trainer's default (timebudget.Config.strategy)
    partition: str = "iid"
    seed: int = 0
    mode: str = "timebudget"  # "epochs": Flower's quickstart client, a fixed number of local epochs
    local_epochs: int = 1
    lr_decay: str = "round"  # "federation": one linear decay across all rounds
    reply_reserve: float = REPLY_RESERVE_S
    fraction_evaluate: float = 0.0
    # at most about this many passes over the client's shard per round (0: none, train until the deadline): many local
    # passes on a small label-skewed shard pull a client's weights toward its own labels, and FedAvg's mean of such
    # clients loses accuracy (client drift; at a 30 s cap 360-680 passes a round took the global accuracy from 0.981 to
    # 0.911). 2: on the development seeds (10, 11; benchmarks/README.md, session 9) 1, 2, 3 and 5 passes tied at 29 s
    # (0.985-0.986), and 2 reached 0.988 first
    max_local_passes: float = MAX_LOCAL_PASSES
    weighting: str = "work"  # see WEIGHTINGS
    overrides: str = ""  # extra ``key=value`` config fields for every client's run, separated by spaces

    def validate(self) -> "RunSettings":
        if self.rounds < 1:
            raise TimebudgetError(f"--rounds must be >= 1, got {self.rounds}")
        if not (self.round_seconds > 0 and math.isfinite(self.round_seconds)):
            raise TimebudgetError(f"--round-seconds must be a positive number, got {self.round_seconds!r}")
        if self.clients < 1:
            raise TimebudgetError(f"--clients must be >= 1, got {self.clients}")
        if self.mode not in MODES:
            raise TimebudgetError(f"unknown mode {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.lr_decay not in LR_DECAYS:
            raise TimebudgetError(f"unknown lr decay {self.lr_decay!r}; allowed: {', '.join(LR_DECAYS)}")
        if self.weighting not in WEIGHTINGS:
            raise TimebudgetError(f"unknown weighting {self.weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
        if self.local_epochs < 1:
            raise TimebudgetError(f"--local-epochs must be >= 1, got {self.local_epochs}")
        if not (self.reply_reserve >= 0 and math.isfinite(self.reply_reserve)):
            raise TimebudgetError(f"--reply-reserve must be a number >= 0, got {self.reply_reserve!r}")
        if not (self.max_local_passes >= 0 and math.isfinite(self.max_local_passes)):
            raise TimebudgetError(f"--max-local-passes must be a number >= 0 (0: none), got {self.max_local_passes!r}")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            raise TimebudgetError(f"fraction-evaluate must be in [0, 1], got {self.fraction_evaluate}")
        parse_scheme(self.partition)
        return self

    def to_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_run_config(cls, values: Mapping[str, Any]) -> "RunSettings":
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        picked = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name in known:
                default = getattr(cls, name)
                picked[name] = type(default)(value)
        return cls(**picked).validate()


@dataclass
class NodeSettings:
    """Per device (``flower-supernode --node-config``): its partition, an optional cap of its own, and ``speed``
    below 1 to make it a slower device on purpose (0.25: four times slower)."""

    partition_id: int
    num_partitions: int
    speed: float = 1.0
    cap_seconds: float | None = None

    @classmethod
    def from_node_config(cls, values: Mapping[str, Any]) -> "NodeSettings":
        missing = [k for k in ("partition-id", "num-partitions") if k not in values]
        if missing:
            raise TimebudgetError(f"node config lacks {', '.join(missing)} (flower-supernode --node-config "
                                  "'partition-id=0 num-partitions=2')")
        cap = values.get("cap-seconds")
        node = cls(int(values["partition-id"]), int(values["num-partitions"]), float(values.get("speed", 1.0)),
                   float(cap) if cap not in (None, "", 0) else None)
        if not (node.speed > 0 and math.isfinite(node.speed)):
            raise TimebudgetError(f"node speed must be a positive number, got {node.speed!r}")
        if node.cap_seconds is not None and not (node.cap_seconds > 0 and math.isfinite(node.cap_seconds)):
            raise TimebudgetError(f"node cap-seconds must be a positive number, got {node.cap_seconds!r}")
        if not 0 <= node.partition_id < node.num_partitions:
            raise TimebudgetError(f"partition-id {node.partition_id} is out of range for num-partitions "
                                  f"{node.num_partitions} (allowed: 0 to {node.num_partitions - 1})")
        return node

    def to_node_config(self) -> str:
        """The ``--node-config`` string of ``flower-supernode``."""
        text = f"partition-id={self.partition_id} num-partitions={self.num_partitions} speed={self.speed:g}"
        return text + (f" cap-seconds={self.cap_seconds:g}" if self.cap_seconds is not None else "")


def error_reason(partition_id: Any, why: str) -> str:
    """An error reply's reason, naming the client so the server can put the error in that client's row."""
    return f"{ERROR_PREFIX}{partition_id}: {why}"


def error_client(reason: str) -> int | None:
    """The partition id an error reply's reason names (see :func:`error_reason`), if any."""
    head = reason[len(ERROR_PREFIX):].split(":", 1)[0] if reason.startswith(ERROR_PREFIX) else ""
    return int(head) if head.isdigit() else None


def node_dir(run: RunSettings, node: NodeSettings) -> Path:
    """The client's own folder across rounds (its runs, score tables and measured costs), since Flower recreates the
    ClientApp (and in 1.42 its whole process) for every message."""
    return Path(run.out) / "clients" / f"client_{node.partition_id}"


def refuse_early(folder: Path, elapsed: float, cap_s: float, reply_s: float, server_round: int,
                 before_import: bool = False) -> None:
    """Raise :class:`BudgetTooSmall` at once, while an error reply still reaches the server in time, when what this
    client may use of its round (``cap_s`` less ``reply_s``, the reply's reserve) is gone after ``elapsed`` (Flower's
    delivery and the process start-up), or when what it measured in its last round (the imports and weights before
    training when ``before_import``, the set-up of data, model and calibration, one step and the tail) cannot fit in
    what is left.

    A refusal from the last round's measurements is a forecast, and a forecast from one slow round (a load spike, a
    cold disk cache) would otherwise keep the client out for good, since only a trained round measures anew. So such a
    refusal is never made in two rounds in a row (``server_round`` tells them apart): the round after one is tried, and
    :func:`timebudget.train`'s own calibration then decides on fresh measurements (it still refuses in time when the
    round cannot hold one step). Reads and writes only JSON, so the ClientApp can call it before it imports torch."""
    seconds = cap_s - reply_s
    if seconds <= 0 or elapsed >= seconds:
        raise BudgetTooSmall(
            f"round cap {cap_s:g} s is too small: {elapsed:.2f} s had passed since the server sent the round (Flower's "
            f"delivery and this client's start-up) and the reply needs {reply_s:.2f} s: nothing left to train"
        )
    last = last_setup(folder)
    if last is None:
        return
    needed = last["setup_s"] + last["step_s"] + last["tail_s"] + (last["import_s"] if before_import else 0.0)
    if elapsed + needed > seconds and last.get("refused_round") != server_round - 1:
        _write_json(folder / SETUP_FILE, {**last, "refused_round": server_round})
        raise BudgetTooSmall(
            f"round cap {cap_s:g} s less the reply's {reply_s:.2f} s leaves {seconds - elapsed:.2f} s after Flower's "
            f"delivery and this client's start-up ({elapsed:.2f} s), and its last round needed {needed:.2f} s to load, "
            "set up, take one step and finish"
        )


def last_setup(folder: Path) -> dict[str, Any] | None:
    """What the client in ``folder`` measured in its last trained round (``SETUP_FILE``), if it has trained one."""
    path = folder / SETUP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a reader never sees half a file); without torch, unlike :mod:`..artifacts`."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def round_sent_at(round_config: Mapping[str, Any], created_at: float) -> float:
    """The server's send of this round on its wall clock: the round's deadline less its cap, or, from a server that
    sends no deadline (any other ServerApp), the message's creation stamp."""
    if DEADLINE_KEY in round_config and "round-seconds" in round_config:
        return float(round_config[DEADLINE_KEY]) - float(round_config["round-seconds"])
    return created_at


def reply_reserve(round_config: Mapping[str, Any], first_round_s: float) -> float:
    """Seconds to keep for the reply's trip to the server: from the longest trip the server measured in earlier rounds
    (see ``REPLY_PATH_KEY``), else ``first_round_s``."""
    path = round_config.get(REPLY_PATH_KEY)
    return first_round_s if path is None else REPLY_SAFETY * float(path) + REPLY_JITTER_S


def budget_start(sent_at: float, cap_s: float, process_start: float, now: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> float:
    """When, on ``now``'s scale, the round started for this client: at the server's send (``sent_at``, a
    ``time.time`` stamp from the message) as far as this machine's clock can tell, and never after
    ``process_start`` (the ClientApp's process is started for the message, so its start-up is charged to the
    round); at most ``cap_s`` ago."""
    t = now()
    age = max(wall() - sent_at if sent_at > 0 else 0.0, t - process_start)
    return t - min(max(age, 0.0), cap_s)
