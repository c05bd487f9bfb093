"""The ServerApp: Flower's own FedAvg, one round's cap as its timeout, the global model evaluated centrally after
every round, and every reply's timing written to ``rounds.jsonl``.

Flower 1.42's grid polls for replies every 3 s, so a reply that arrives in time can be seen up to 3 s late, or not at
all when the timeout falls before the next poll. :class:`TimedGrid` wraps the grid FedAvg is given: it writes the
round's deadline (its wall clock at the send plus the timeout) into each training message, sends through the grid,
polls every 0.1 s until the timeout, and notes when each reply arrived; FedAvg is unchanged.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .. import artifacts, data, models
from ..batches import Batches
from ..config import Config
from ..trainer import evaluate, resolve_defaults
from . import wire
from .local import train_config
from .settings import DEADLINE_KEY, REPLY_PATH_KEY, SMOOTHING_KEY, RunSettings, error_client
from .supernode import shorten_pull_backoff

POLL_S = 0.1
PING_TIMEOUT_S = 10.0  # the longest the server waits for the replies that measure the reply path before round 1

app = ServerApp()


class RoundLog:
    """``rounds.jsonl``: one record per round and client, one per round for the global model. Records are appended
    as they happen (a crash keeps what was done); the client of a node is known from its replies, so records of a
    node that had not yet answered are completed when the file is rewritten at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.clients: dict[int, int] = {}  # node id -> partition id
        # node id -> longest seconds from its ClientApp's return to the server's receipt, as the server can tell: its
        # own seconds from send to receipt less the seconds the client says it used since the send
        self.reply_paths: dict[int, float] = {}

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        for record in self.records:
            if record.get("client") is None and "node" in record:
                record["client"] = self.clients.get(record["node"])
        artifacts.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


class DeadlineFedAvg(FedAvg):
    """Flower's FedAvg on packed weights (:mod:`.wire`; ``layout`` goes into every round's config), whose round config
    also tells the clients how long replies took to reach the server after a ClientApp returned: the longest trip seen
    from any node (measured before round 1 by :func:`measure_reply_paths`, then in every round), so each client
    reserves a measured return path."""

    def __init__(self, log: RoundLog, layout: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log, self.layout = log, layout

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        config.update(self.layout)
        if self.log.reply_paths:
            config[REPLY_PATH_KEY] = max(self.log.reply_paths.values())
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        config.update(self.layout)
        return super().configure_evaluate(server_round, arrays, config, grid)


class TimedGrid(Grid):
    """The grid FedAvg sends through: the same messages, each training message with the round's deadline (the
    server's ``time.time()`` at the send plus the timeout, the same instant the timeout counts from), a 0.1 s poll for
    replies, and a record of each training reply's seconds from the send to the poll that found it at the SuperLink
    (``in_time``: by the timeout). Replies that miss their round are looked for again before the next send and
    recorded as ``late``."""

    def __init__(self, grid: Grid, log: RoundLog) -> None:
        self.grid, self.log = grid, log
        self.late: dict[str, tuple[dict[str, Any], float, float]] = {}  # message id -> its record, send and timeout

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        self._collect_late()
        messages = list(messages)
        kind = messages[0].metadata.message_type if messages else None
        training = kind == MessageType.TRAIN
        sent_wall, sent = time.time(), time.monotonic()
        if kind in (MessageType.TRAIN, MessageType.QUERY) and timeout is not None:
            for msg in messages:
                msg.content["config"][DEADLINE_KEY] = sent_wall + timeout
        ids = list(self.grid.push_messages(messages))
        waiting = dict(zip(ids, messages))
        replies: list[Message] = []
        arrived: dict[str, float] = {}
        end = sent + (timeout if timeout is not None else float("inf"))
        while waiting and (polled := time.monotonic()) < end:
            for reply in self.grid.pull_messages(list(waiting)):
                if waiting.pop(reply.metadata.reply_to_message_id, None) is not None:
                    replies.append(reply)
                    arrived[reply.metadata.reply_to_message_id] = polled - sent  # at the SuperLink by this poll
            if waiting:
                time.sleep(min(POLL_S, max(0.0, end - time.monotonic())))
        if training:
            by_id = {r.metadata.reply_to_message_id: r for r in replies}
            for msg_id, msg in zip(ids, messages):
                record: dict[str, Any] = {"round": int(msg.content["config"]["server-round"]), "client": None,
                                          "node": msg.metadata.dst_node_id, "cap_s": timeout, "seconds": None,
                                          "samples": None, "in_time": False, "sent_at": round(sent_wall, 3)}
                if msg_id in by_id:
                    self._describe(record, by_id[msg_id], arrived[msg_id], arrived[msg_id])
                    record["in_time"] = timeout is None or arrived[msg_id] <= timeout
                else:
                    self.late[msg_id] = (record, sent, timeout if timeout is not None else 0.0)
                record["client"] = self.log.clients.get(record["node"])
                self.log.add(record)
        elif kind == MessageType.QUERY:  # measure_reply_paths: each reply's trip, before round 1
            paths = {}
            for reply in replies:
                if not reply.has_error():
                    node, metrics = reply.metadata.src_node_id, reply.content["metrics"]
                    self.log.clients[node] = int(metrics["partition-id"])
                    paths[node] = max(0.0, arrived[reply.metadata.reply_to_message_id] - metrics["client-seconds"])
                    self.log.reply_paths[node] = max(paths[node], self.log.reply_paths.get(node, 0.0))
            self.log.add({"round": 0, "reply_paths": {str(self.log.clients[n]): round(p, 3) for n, p in paths.items()},
                          "replies": len(replies), "sent": len(messages)})
        return replies

    def _collect_late(self) -> None:
        """Pull the replies that missed their round, to record when they came (by this poll: an upper bound) and
        why (an error's reason); FedAvg never sees them."""
        if not self.late:
            return
        polled = time.monotonic()
        for reply in self.grid.pull_messages(list(self.late)):
            record, sent, timeout = self.late.pop(reply.metadata.reply_to_message_id, (None, 0.0, 0.0))
            if record is not None:  # it came after the timeout: its trip was at least the rest of the round
                self._describe(record, reply, polled - sent, min(timeout, polled - sent))
                record["late"] = True

    def _describe(self, record: dict[str, Any], reply: Message, seconds: float, trip_end: float) -> None:
        """Fill ``record`` from ``reply``, seen ``seconds`` after the send; the reply's trip is counted as ending at
        ``trip_end`` (``seconds``, or the timeout for a late reply, whose arrival is known only by the next poll)."""
        record["seconds"] = round(seconds, 4)
        node = record["node"]
        if reply.has_error():
            record["error"] = reply.error.reason
            if (client := error_client(reply.error.reason)) is not None:
                self.log.clients[node] = client
            return
        metrics = reply.content["metrics"]
        self.log.clients[node] = int(metrics["partition-id"])
        path = max(0.0, trip_end - metrics["client-seconds"])
        self.log.reply_paths[node] = max(path, self.log.reply_paths.get(node, 0.0))
        record.update(samples=int(metrics["samples"]), cap_s=metrics["cap-seconds"],
                      client_seconds=round(metrics["client-seconds"], 4), loss=metrics["loss"], trip_s=round(path, 3),
                      reply_reserve=round(metrics.get("reply-reserve", float("nan")), 3),
                      delivery_s=round(metrics["delivery-seconds"], 3), startup_s=round(metrics["startup-seconds"], 3),
                      passes=round(metrics.get("passes", float("nan")), 2))
        for key in ("first-step-seconds", "tail-start-seconds"):  # timebudget clients: where the round went
            if key in metrics:
                record[key.removesuffix("-seconds").replace("-", "_") + "_s"] = round(metrics[key], 3)


def measure_reply_paths(grid: TimedGrid, arrays: ArrayRecord, layout: dict[str, Any], clients: int,
                        timeout: float, wait_s: float = 60.0) -> None:
    """Before round 1, send every node a query with the model's weights, which the client answers at once with as
    many bytes (``client.query``); the reply's trip (from the client's return to the server's receipt) is then
    measured, as in every round, and round 1's clients reserve it instead of the run's guess (``reply-reserve``).
    Waits up to ``wait_s`` for ``clients`` nodes to connect, as FedAvg does; nodes that do not answer within
    ``timeout`` are left out (the longest trip of any node is what the clients reserve)."""
    deadline = time.monotonic() + wait_s
    while len(nodes := list(grid.get_node_ids())) < clients and time.monotonic() < deadline:
        time.sleep(POLL_S)
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 0, "round-seconds": timeout,
                                                                    **layout})})
    grid.send_and_receive([Message(content, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes],
                          timeout=timeout)


def train_settings(run: RunSettings, cfg: Config) -> ConfigRecord:
    """What every training message's config carries besides the round and its deadline: the round's cap, and the label
    smoothing ``cfg`` resolved from the whole training split (``SMOOTHING_KEY``: one loss for every client)."""
    return ConfigRecord({"round-seconds": run.round_seconds, SMOOTHING_KEY: float(cfg.label_smoothing)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.monotonic()
    # a reply's arrays pulled before its SuperNode has pushed them all would wait flwr's 1 s back-off, inside the round
    if (why := shorten_pull_backoff()) is not None:
        print(f"the server's object-pull back-off is Flower's own: {why}", flush=True)
    run = RunSettings.from_run_config(context.run_config)
    out = Path(run.out)
    log = RoundLog(out / "rounds.jsonl")
    cfg = train_config(run, run.round_seconds, out)
    bundle = data.load(cfg.data, cfg.data_dir, cfg.image_size)
    cfg = resolve_defaults(cfg, bundle)
    torch.manual_seed(run.seed)
    model = models.build(cfg.model, bundle.input_shape, bundle.num_outputs, bundle.kind)
    test = Batches(bundle.test, torch.device("cpu"), bundle.input_shape)

    layout = wire.layout(model.state_dict())

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(wire.unpack(arrays, layout))
        metrics = evaluate(model, test, bundle, 256)
        log.add({"round": server_round, "test_metrics": metrics, "elapsed_s": round(time.monotonic() - started, 3)})
        return MetricRecord(metrics)

    strategy = DeadlineFedAvg(log, layout, fraction_train=1.0, fraction_evaluate=run.fraction_evaluate,
                              min_train_nodes=run.clients, min_available_nodes=run.clients,
                              min_evaluate_nodes=run.clients if run.fraction_evaluate else 0)
    timed, initial = TimedGrid(grid, log), wire.pack(model.state_dict())
    try:
        if run.mode == "timebudget":
            measure_reply_paths(timed, initial, layout, run.clients, min(run.round_seconds, PING_TIMEOUT_S))
        result = strategy.start(
            grid=timed, initial_arrays=initial,
            train_config=train_settings(run, cfg), num_rounds=run.rounds,
            timeout=run.round_seconds, evaluate_fn=central,
        )
        artifacts.save_torch(out / "global_model.pt", wire.unpack(result.arrays, layout))
    finally:
        log.close()
