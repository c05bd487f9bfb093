"""The ClientApp: a Flower client that trains until its round's deadline and answers before it.

Flower 1.42 runs every message in a process of its own, which exits after its one reply (no flwr 1.42 setting keeps
one running): Flower's SuperExec starts a fresh ``flwr-clientapp`` (interpreter and imports), and the launcher's
warm executor (``executor``) forks one from a process that has done the imports. Either way everything this client
costs before training (Flower's delivery, its process start, any imports, loading the weights) is inside the round.
The client needs no estimate of it: the server sends the round's deadline on its wall clock (``settings.DEADLINE_KEY``,
with the cap), the client trains until that deadline less the reply's trip, which the server measures for each node
and sends back in the next round's config, and it reads only the clock. A message
without a deadline (another ServerApp) counts from its ``created_at``, and at the latest from this process's start.
State across rounds (the score table, the strategy's bookkeeping) lives in the client's own folder under the run's
``out``.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..clock import process_start_time
from ..errors import TimebudgetError, first_line
from .settings import (SMOOTHING_KEY, NodeSettings, RunSettings, budget_start, error_reason, node_dir, refuse_early,
                       reply_reserve, round_sent_at)

ERROR_CODE = 2  # flwr's ErrorCode.CLIENT_APP_RAISED_EXCEPTION: the server logs the reason and drops the reply

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return train_reply(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global weights' metrics on this client's share of the test split."""
    from . import local, wire  # torch: imported once the message is in hand

    run, node = RunSettings.from_run_config(context.run_config), NodeSettings.from_node_config(context.node_config)
    metrics = local.local_metrics(wire.unpack(msg.content["arrays"], msg.content["config"]), run, node)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return path_reply(msg, context)


def path_reply(msg: Message, context: Context, now: Callable[[], float] = time.monotonic,
               wall: Callable[[], float] = time.time, process_start: float | None = None) -> Message:
    """The server's measure of the reply path before round 1 (``server.measure_reply_paths``): answer at once with
    as many bytes as a round's reply (other values, so no hop can skip them as objects it already holds) and the
    seconds used since the server's send, from which the server tells the reply's trip."""
    import torch

    from . import wire

    config = msg.content["config"]
    process_start = process_start_time(now) if process_start is None else process_start
    start = budget_start(round_sent_at(config, msg.metadata.created_at), float(config["round-seconds"]),
                         process_start, now, wall)
    weights = wire.unpack(msg.content["arrays"], config)
    arrays = wire.like({k: torch.rand_like(v.float()).to(v.dtype) for k, v in weights.items()}, msg.content["arrays"])
    metrics = {"partition-id": float(context.node_config.get("partition-id", -1)), "client-seconds": now() - start,
               "delivery-seconds": process_start - start}
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


def train_reply(msg: Message, context: Context, now: Callable[[], float] = time.monotonic,
                wall: Callable[[], float] = time.time, process_start: float | None = None) -> Message:
    """Train the message's weights for the round's cap (the server's ``round-seconds``, bounded by this node's
    ``cap-seconds``) and reply with the new weights and metrics; a cap too small, or bad settings, get an error
    reply at once (the server logs it) instead of a late or missing one. ``process_start`` (on ``now``'s scale)
    defaults to this process's start: Flower starts the ClientApp's process for the message."""
    try:
        run, node = RunSettings.from_run_config(context.run_config), NodeSettings.from_node_config(context.node_config)
        round_config = msg.content["config"]
        server_round = int(round_config["server-round"])
        cap = float(round_config.get("round-seconds", run.round_seconds))
        if node.cap_seconds is not None:
            cap = min(cap, node.cap_seconds)
        process_start = process_start_time(now) if process_start is None else process_start
        start = budget_start(round_sent_at(round_config, msg.metadata.created_at), cap, process_start, now, wall)
        entered = now()
        startup = {"delivery-seconds": process_start - start, "startup-seconds": entered - process_start}
        reserve = reply_reserve(round_config, run.reply_reserve)
        if run.mode == "timebudget":  # a round it cannot fit is refused before paying for the torch import
            refuse_early(node_dir(run, node), entered - start, cap, reserve, server_round, before_import=True)
        from . import local, wire

        t0 = now()
        weights = wire.unpack(msg.content["arrays"], round_config)
        wire.like(weights, msg.content["arrays"])  # time one serialisation: the reply's own
        reply_s = (now() - t0) + reserve
        smoothing = round_config.get(SMOOTHING_KEY)
        if run.mode == "epochs":
            result = local.fixed_epochs(weights, run, node, run.local_epochs, now, smoothing)
        else:
            result = local.train_round(weights, run, node, server_round, cap, start, reply_s, now, entered, smoothing)
        arrays = wire.like(result.weights, msg.content["arrays"])
        metrics = MetricRecord({**result.metrics, **startup, "cap-seconds": cap, "reply-reserve": reserve,
                                "client-seconds": now() - start})
        print(f"timebudget client {node.partition_id} round {server_round}: delivered after "
              f"{startup['delivery-seconds']:.2f} s, process start-up {startup['startup-seconds']:.2f} s, "
              f"{result.metrics['samples']:.0f} samples, replying at {metrics['client-seconds']:.2f} s of {cap:g} s",
              flush=True)  # into the SuperNode's log
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    except TimebudgetError as exc:
        reason = error_reason(context.node_config.get("partition-id", "?"), first_line(exc))
        print(f"error: {reason}", flush=True)
        return Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)
