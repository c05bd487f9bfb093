"""The federated room with Flower itself: the ClientApp's handlers called with real Messages (no server), and a real
loopback deployment (SuperLink, two SuperNodes, the ServerApp) started by ``timebudget federated``."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

flwr = pytest.importorskip("flwr")

from flwr.app import (ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, Metadata,  # noqa: E402
                      MetricRecord, RecordDict)

from timebudget import data, models  # noqa: E402
from timebudget.federated import client, launcher, local, server, wire  # noqa: E402
from timebudget.federated.settings import (DEADLINE_KEY, REPLY_JITTER_S, REPLY_SAFETY, SMOOTHING_KEY,  # noqa: E402
                                           NodeSettings, RunSettings)
from timebudget.trainer import default_smoothing, resolve_defaults  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TICK = 0.05  # fake seconds per clock reading in the handler tests


class TickingClock:
    """A fake monotonic clock that moves ``tick`` seconds at every reading: the budget runs out after a fixed number
    of readings, however busy the machine is."""

    def __init__(self, tick: float = TICK) -> None:
        self.t, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def digits_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return models.build("cnn", (1, 8, 8), 10, "image").state_dict()


def make_context(tmp_path: Path, partition_id: int = 0, run_fields: dict[str, object] | None = None,
                 **node: object) -> Context:
    run = RunSettings(out=str(tmp_path), rounds=2, round_seconds=8.0, clients=2, data="digits", partition="iid",
                      **(run_fields or {}))
    node_config = {"partition-id": partition_id, "num-partitions": 2, **node}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run.to_run_config())


def server_message(content: RecordDict, message_type: str, server_round: int = 1) -> Message:
    """A message as the SuperNode hands it to the ClientApp (its metadata set by the server's side)."""
    metadata = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=1, dst_node_id=7, reply_to_message_id="",
                        group_id=str(server_round), created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content, metadata=metadata)


def train_message(seconds: float, server_round: int = 1) -> Message:
    config = ConfigRecord({"round-seconds": seconds, "server-round": server_round})
    return server_message(RecordDict({"arrays": ArrayRecord(digits_weights()), "config": config}), MessageType.TRAIN,
                          server_round)


def call_train(msg: Message, context: Context, clock: TickingClock) -> Message:
    sent_wall, sent = msg.metadata.created_at, clock.t
    return client.train_reply(msg, context, now=clock, wall=lambda: sent_wall + (clock.t - sent), process_start=sent)


def test_train_handler_replies_with_weights_and_metrics_within_its_cap(tmp_path: Path) -> None:
    clock, cap = TickingClock(), 8.0
    context = make_context(tmp_path)
    reply = call_train(train_message(cap), context, clock)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    arrays = reply.content["arrays"].to_torch_state_dict()
    weights = digits_weights()
    assert arrays.keys() == weights.keys()
    assert any(not torch.equal(arrays[k], weights[k]) for k in weights)  # it trained
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == metrics["samples"] > 0
    assert metrics["partition-id"] == 0 and metrics["cap-seconds"] == cap
    assert metrics["loss"] == metrics["loss"]  # not NaN
    # on the fake clock the handler returned before the cap less the reply's reserve
    assert metrics["client-seconds"] <= cap - RunSettings().reply_reserve + 2 * TICK
    assert clock.t - 1000.0 <= cap
    # its state for the next round: the run folder with the score table and the strategy's bookkeeping
    assert (tmp_path / "clients" / "client_0" / "round_001" / "scores.pt").exists()
    assert (tmp_path / "clients" / "client_0" / "round_001" / "strategy.pt").exists()


def test_the_next_round_starts_from_the_saved_score_table_and_a_node_cap_bounds_the_round(tmp_path: Path) -> None:
    call_train(train_message(8.0, server_round=1), make_context(tmp_path), TickingClock())
    saved = torch.load(tmp_path / "clients" / "client_0" / "round_001" / "scores.pt")
    msg = train_message(9.0, server_round=2)
    msg.content["config"]["reply-path-seconds"] = 2.0  # the longest trip the server measured
    reply = call_train(msg, make_context(tmp_path, **{"cap-seconds": 8.0}), TickingClock())
    metrics = reply.content["metrics"]
    assert metrics["cap-seconds"] == 8.0
    # the measured path, with its safety, reserved (give or take the fake clock's readings around the serialisation)
    assert metrics["client-seconds"] <= 8.0 - (1.5 * 2.0 + 0.5) + 2 * TICK
    after = torch.load(tmp_path / "clients" / "client_0" / "round_002" / "scores.pt")
    assert (after["count"] >= saved["count"]).all() and after["count"].sum() > saved["count"].sum()


def test_a_pass_cap_answers_early_from_the_first_round_with_the_samples_it_trained(tmp_path: Path) -> None:
    """With ``max-local-passes`` (on by default) even the first round, which has only the calibration's step to go
    by, stops well before its cap; the next one stops after about that many passes over the client's share by the
    first round's measured seconds per pass, and reports the samples it trained (FedAvg's weight), not what the cap
    would have held. Without the cap a round trains until its deadline."""
    capped = {"max_local_passes": 1.0}
    first = call_train(train_message(30.0, server_round=1), make_context(tmp_path, run_fields=capped), TickingClock())
    assert first.content["metrics"]["client-seconds"] < 30.0 / 2
    reply = call_train(train_message(30.0, server_round=2), make_context(tmp_path, run_fields=capped), TickingClock())
    metrics = reply.content["metrics"]
    summary = json.loads((tmp_path / "clients" / "client_0" / "round_002" / "summary.json").read_text())
    assert metrics["num-examples"] == metrics["samples"] == summary["samples_trained"] > 0
    # about one: the first round's one step left out the per-pass work (planning, scoring), which this clock, moving at
    # every reading, makes far heavier than a real one does
    assert 0.5 <= metrics["passes"] <= 2.5 and metrics["passes"] == pytest.approx(summary["passes"])
    assert metrics["client-seconds"] < 30.0 / 2
    uncapped = call_train(train_message(30.0), make_context(tmp_path / "uncapped", run_fields={"max_local_passes": 0}),
                          TickingClock())
    assert uncapped.content["metrics"]["passes"] > 1.5 * metrics["passes"]
    assert uncapped.content["metrics"]["client-seconds"] > 30.0 - RunSettings().reply_reserve - 2.0


def test_packed_weights_are_one_array_and_come_back_as_they_were() -> None:
    weights = digits_weights()
    weights["0.1.num_batches_tracked"] += 7
    arrays, entries = wire.pack(weights), wire.layout(weights)
    assert list(arrays.keys()) == [wire.PACKED] and wire.is_packed(arrays)
    back = wire.unpack(arrays, ConfigRecord({"round-seconds": 3.0, **entries}))  # as the round's config carries it
    assert back.keys() == weights.keys()
    assert all(back[k].dtype == weights[k].dtype and torch.equal(back[k], weights[k]) for k in weights)
    ordinary = ArrayRecord(weights)
    assert not wire.is_packed(ordinary) and wire.unpack(ordinary, {}).keys() == weights.keys()
    assert list(wire.like(weights, ordinary).keys()) == list(weights)  # answered in kind
    with pytest.raises(ValueError, match="layout"):
        wire.unpack(wire.pack({**weights, "extra": torch.zeros(3)}), entries)


def test_a_packed_round_is_answered_packed(tmp_path: Path) -> None:
    weights = digits_weights()
    msg = train_message(8.0)
    msg.content["arrays"] = wire.pack(weights)
    msg.content["config"].update(wire.layout(weights))
    reply = call_train(msg, make_context(tmp_path), TickingClock())
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert wire.is_packed(reply.content["arrays"])
    trained = wire.unpack(reply.content["arrays"], wire.layout(weights))
    assert trained.keys() == weights.keys() and any(not torch.equal(trained[k], weights[k]) for k in weights)


def test_the_path_query_is_answered_at_once_with_a_replys_bytes(tmp_path: Path) -> None:
    weights = digits_weights()
    config = ConfigRecord({"round-seconds": 10.0, "server-round": 0, **wire.layout(weights)})
    msg = server_message(RecordDict({"arrays": wire.pack(weights), "config": config}), MessageType.QUERY, 0)
    config[DEADLINE_KEY] = msg.metadata.created_at - 0.4 + 10.0  # sent 0.4 s before the message's creation stamp
    clock = TickingClock()
    sent_wall, sent = msg.metadata.created_at, clock.t
    reply = client.path_reply(msg, make_context(tmp_path, partition_id=1), now=clock,
                              wall=lambda: sent_wall + (clock.t - sent), process_start=sent)
    metrics = reply.content["metrics"]
    assert metrics["partition-id"] == 1 and metrics["delivery-seconds"] == pytest.approx(0.4, abs=2 * TICK)
    assert 0.4 <= metrics["client-seconds"] <= 0.4 + 5 * TICK  # at once: no training
    sent_flat = msg.content["arrays"].to_torch_state_dict()[wire.PACKED]
    echoed = reply.content["arrays"].to_torch_state_dict()[wire.PACKED]
    assert echoed.shape == sent_flat.shape and not torch.equal(echoed, sent_flat)  # as many bytes, other values


def test_data_weighting_reports_the_shard_size_as_fedavgs_weight(tmp_path: Path) -> None:
    reply = call_train(train_message(8.0), make_context(tmp_path, run_fields={"weighting": "data"}), TickingClock())
    metrics = reply.content["metrics"]
    summary = json.loads((tmp_path / "clients" / "client_0" / "round_001" / "summary.json").read_text())
    assert metrics["num-examples"] == summary["n_train"] != metrics["samples"]


def with_deadline(msg: Message, sent_ago: float) -> Message:
    """``msg`` as the ServerApp sends it: the round's deadline on the wall clock, as if sent ``sent_ago`` seconds
    before its ``created_at`` (Flower's delivery and the SuperNode's poll took that long)."""
    config = msg.content["config"]
    config[DEADLINE_KEY] = msg.metadata.created_at - sent_ago + float(config["round-seconds"])
    return msg


def test_the_servers_deadline_counts_the_delivery_against_the_round(tmp_path: Path) -> None:
    clock, cap = TickingClock(), 10.0
    reply = call_train(with_deadline(train_message(cap), sent_ago=3.0), make_context(tmp_path), clock)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content["metrics"]
    assert metrics["delivery-seconds"] == pytest.approx(3.0, abs=2 * TICK)
    reserve = RunSettings().reply_reserve
    assert metrics["reply-reserve"] == reserve
    # client-seconds count from the server's send: the 3 s of delivery were taken out of the training time
    assert 3.0 < metrics["client-seconds"] <= cap - reserve + 2 * TICK


def test_a_deadline_already_gone_gets_an_error_reply_before_any_training(tmp_path: Path) -> None:
    msg = with_deadline(train_message(8.0), sent_ago=7.0)  # 1 s left, less than the 2 s reply reserve
    reply = call_train(msg, make_context(tmp_path), TickingClock())
    assert reply.has_error() and "nothing left to train" in reply.error.reason
    assert not (tmp_path / "clients" / "client_0" / "round_001").exists()


def test_a_client_clock_behind_the_servers_counts_from_its_own_receipt(tmp_path: Path) -> None:
    """A deadline more than a cap away on this client's clock (its clock is behind the server's): the round counts
    from the process start instead, not from a send in this client's future."""
    reply = call_train(with_deadline(train_message(8.0), sent_ago=-100.0), make_context(tmp_path), TickingClock())
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content["metrics"]
    assert metrics["delivery-seconds"] == 0.0
    assert metrics["client-seconds"] <= 8.0 - RunSettings().reply_reserve + 2 * TICK


def test_a_cap_too_small_gets_an_error_reply_not_a_crash(tmp_path: Path) -> None:
    reply = call_train(train_message(2.5), make_context(tmp_path), TickingClock())
    assert reply.has_error()
    assert "too small" in reply.error.reason
    assert not (tmp_path / "clients" / "client_0" / "round_001" / "summary.json").exists()


def test_a_bad_node_config_gets_an_error_reply(tmp_path: Path) -> None:
    reply = call_train(train_message(8.0), make_context(tmp_path, partition_id=5), TickingClock())
    assert reply.has_error() and "out of range" in reply.error.reason


def test_every_client_trains_with_the_label_smoothing_the_server_resolved_for_the_federation(tmp_path: Path) -> None:
    """A balanced table split by a skewed Dirichlet partition: the server, from the whole training split, smooths; a
    client whose shard is skewed would not on its own, and trains with the server's value when the message carries it
    (a message without it, from another ServerApp, leaves the client its own)."""
    g = np.random.default_rng(0)
    y = np.arange(600) % 3
    x = (g.normal(size=(600, 8)) + y[:, None]).astype(np.float32)
    np.savez(tmp_path / "table.npz", x_train=x, y_train=y, x_test=x[:90], y_test=y[:90])
    run = RunSettings(out=str(tmp_path / "fed"), rounds=1, round_seconds=8.0, clients=2,
                      data=str(tmp_path / "table.npz"), partition="dirichlet:0.3", seed=3)
    loaded = data.load(run.data)
    cfg = resolve_defaults(local.train_config(run, run.round_seconds, Path(run.out)), loaded)
    settings = server.train_settings(run, cfg)
    assert settings[SMOOTHING_KEY] == 0.1 and settings["round-seconds"] == 8.0
    assert default_smoothing(local.client_bundle(loaded, run, NodeSettings(0, 2))) == 0.0  # the shard alone: none
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config=run.to_run_config())
    torch.manual_seed(0)
    weights = models.build("mlp", (8,), 3, "tabular").state_dict()
    smoothing = {}
    for server_round, config in ((1, {**settings, "server-round": 1}), (2, {"round-seconds": 8.0, "server-round": 2})):
        msg = server_message(RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(config)}),
                             MessageType.TRAIN, server_round)
        reply = call_train(msg, context, TickingClock())
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        saved = tmp_path / "fed" / "clients" / "client_0" / f"round_{server_round:03d}" / "config.yaml"
        smoothing[server_round] = yaml.safe_load(saved.read_text())["label_smoothing"]
    assert smoothing == {1: 0.1, 2: 0.0}
    for bad in ("abc", 2.0):  # a value the config refuses gets an error reply naming the key, not a crash
        msg = server_message(RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(
            {"round-seconds": 8.0, "server-round": 3, SMOOTHING_KEY: bad})}), MessageType.TRAIN, 3)
        reply = call_train(msg, context, TickingClock())
        assert reply.has_error() and "label_smoothing" in reply.error.reason


def test_evaluate_handler_reports_metrics_on_the_clients_test_share(tmp_path: Path) -> None:
    msg = server_message(RecordDict({"arrays": ArrayRecord(digits_weights()), "config": ConfigRecord({})}),
                         MessageType.EVALUATE)
    metrics = client.evaluate(msg, make_context(tmp_path, partition_id=1)).content["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 150 <= metrics["num-examples"] <= 210  # half of digits' 360 test samples


class LoopGrid:
    """The grid under :class:`server.TimedGrid` without a SuperLink: each pushed message gets the reply ``answer``
    builds for it, which ``pull_messages`` hands over once ``after`` seconds have passed since the push."""

    def __init__(self, answer, after: float) -> None:
        self.answer, self.after = answer, after
        self.pushed: list[tuple[Message, float]] = []  # each message with the wall clock at its push
        self.replies: dict[str, tuple[Message, float]] = {}

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg_id = f"m{len(self.pushed)}"
            self.pushed.append((msg, time.time()))
            self.replies[msg_id] = (self.answer(msg), time.monotonic() + self.after)
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids):
        ready = [i for i in message_ids if i in self.replies and time.monotonic() >= self.replies[i][1]]
        return [self.replies.pop(i)[0] for i in ready]

    def get_node_ids(self):
        return [11, 12]


def test_the_server_sends_the_rounds_deadline_and_measures_each_replys_trip(tmp_path: Path) -> None:
    def answer(msg: Message) -> Message:
        if msg.metadata.dst_node_id == 12:  # its client refused the round
            return Message(Error(code=client.ERROR_CODE, reason="timebudget client 1: nothing left to train"),
                           reply_to=msg)
        metrics = {"partition-id": 0, "samples": 64, "num-examples": 64, "cap-seconds": 5.0, "client-seconds": 0.1,
                   "loss": 0.5, "reply-reserve": 2.0, "delivery-seconds": 0.0, "startup-seconds": 0.0}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    log = server.RoundLog(tmp_path / "rounds.jsonl")
    grid = server.TimedGrid(LoopGrid(answer, after=0.3), log)
    config = ConfigRecord({"server-round": 1, "round-seconds": 5.0})
    messages = [Message(RecordDict({"config": config}), metadata=Metadata(
        run_id=1, message_id="", src_node_id=1, dst_node_id=node, reply_to_message_id="", group_id="1",
        created_at=time.time(), ttl=3600.0, message_type=MessageType.TRAIN)) for node in (11, 12)]
    before = time.time()
    replies = list(grid.send_and_receive(messages, timeout=5.0))
    assert len(replies) == 2
    for msg, pushed_at in grid.grid.pushed:  # the deadline: the wall clock at the send (before the push) + the cap
        assert before + 5.0 <= msg.content["config"][DEADLINE_KEY] <= pushed_at + 5.0
    records = {r["node"]: r for r in log.records}
    # seen no earlier than 0.3 s after the send, of which the client says it used 0.1 s: the rest was the trip
    assert records[11]["trip_s"] >= 0.2 and log.reply_paths[11] == pytest.approx(records[11]["trip_s"], abs=1e-3)
    assert records[11]["in_time"] and records[11]["client"] == 0
    assert records[12]["client"] == 1 and "nothing left" in records[12]["error"] and 12 not in log.reply_paths


def test_before_round_one_the_server_measures_each_nodes_reply_path(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The query before round 1: each node answers with the weights' bytes and its seconds since the send; what the
    server saw beyond those is the trip, which round 1's config then tells the clients to reserve."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_node_id", 1)  # as in a ServerApp process, which makes messages
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    def answer(msg: Message) -> Message:
        assert msg.metadata.message_type == MessageType.QUERY and DEADLINE_KEY in msg.content["config"]
        metrics = {"partition-id": msg.metadata.dst_node_id - 11, "client-seconds": 0.1, "delivery-seconds": 0.05}
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": MetricRecord(metrics)}), reply_to=msg)

    log = server.RoundLog(tmp_path / "rounds.jsonl")
    grid = server.TimedGrid(LoopGrid(answer, after=0.3), log)
    weights = digits_weights()
    server.measure_reply_paths(grid, wire.pack(weights), wire.layout(weights), clients=2, timeout=5.0)
    assert set(log.reply_paths) == {11, 12} and all(0.2 <= p < 1.0 for p in log.reply_paths.values())
    assert log.clients == {11: 0, 12: 1}
    (record,) = log.records
    assert record["round"] == 0 and set(record["reply_paths"]) == {"0", "1"} and "node" not in record
    strategy = server.DeadlineFedAvg(log, wire.layout(weights), fraction_train=1.0, min_train_nodes=2,
                                     min_available_nodes=2)
    (first, _) = strategy.configure_train(1, wire.pack(weights), ConfigRecord({"round-seconds": 5.0}), grid)
    config = first.content["config"]
    assert config[server.REPLY_PATH_KEY] == max(log.reply_paths.values()) and wire.NAMES in config


@pytest.mark.parametrize("argv, needle", [
    (["--clients", "3", "--client-speed", "1,0.25"], "2 values for 3 clients"),
    (["--clients", "2", "--client-speed", "1,0"], "not a positive number"),
    (["--clients", "2", "--client-caps", "5,x"], "not a positive number"),
    (["--partition", "shards:3"], "unknown partition scheme"),
    (["--round-seconds", "0"], "round-seconds"),
    (["--supernode-poll", "-1"], "--supernode-poll must be a number of seconds >= 0"),
])
def test_bad_launcher_input_is_one_line(cli_main, tmp_path: Path, argv: list[str], needle: str) -> None:
    result = cli_main("federated", "--out", str(tmp_path / "fed"), *argv)
    assert result.code == 2
    result.one_line_error(needle)
    assert not (tmp_path / "fed").exists()


def test_a_port_in_use_is_one_line(cli_main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(launcher, "free_ports", lambda count: [port] * count)
        result = cli_main("federated", "--out", str(tmp_path / "fed"))
    assert result.code == 2
    result.one_line_error(f"port {port}", "in use")
    assert flower_processes(tmp_path / "fed") == []


def test_warm_processes_where_they_cannot_run_is_one_line(cli_main, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher.executor, "supported", lambda: "no fork() or /proc on this system")
    result = cli_main("federated", "--out", str(tmp_path / "fed"))
    assert result.code == 2
    result.one_line_error("--client-processes warm cannot run", "no fork()", "--client-processes fresh")
    assert flower_processes(tmp_path / "fed") == []


def test_without_flwr_the_command_is_one_line(cli_main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher.importlib.util, "find_spec", lambda name: None)
    result = cli_main("federated", "--out", str(tmp_path / "fed"))
    assert result.code == 2
    result.one_line_error("pip install", "federated")


# --- a real deployment on 127.0.0.1 ----------------------------------------------------------------------------------
def flower_processes(out: Path) -> list[int]:
    """Live (not zombie) processes whose environment names this run's FLWR_HOME: what the launcher started."""
    return launcher.deployment_pids(str(out.resolve() / ".flwr"))


def federated(out: Path, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "timebudget", "federated", "--out", str(out), *argv], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_loopback_deployment_writes_rounds_and_leaves_no_process(tmp_path: Path) -> None:
    """Client 0 (half speed) trains; client 1's own cap of 0.3 s is less than its reply's reserve (at least 0.5 s), so
    it answers each round with an error, in time, which the records and the table show under its name. (A 1 s cap
    used to be refused too; with session 9's shorter delivery a quiet machine can fit a round in it.)"""
    out = tmp_path / "fed"
    proc = federated(out, "--clients", "2", "--rounds", "2", "--round-seconds", "12", "--client-speed", "0.5,1",
                     "--client-caps", ",0.3")
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    replies = [r for r in records if "node" in r]
    globals_ = [r for r in records if "test_metrics" in r]
    assert [r["round"] for r in globals_] == [0, 1, 2]
    (query,) = [r for r in records if "reply_paths" in r]  # the reply path, measured before round 1
    assert query["round"] == 0 and set(query["reply_paths"]) == {"0", "1"}
    assert sorted((r["round"], r["client"]) for r in replies) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for r in replies:
        assert {"round", "client", "cap_s", "seconds", "samples", "in_time"} <= r.keys()
    trained = [r for r in replies if "error" not in r]
    errors = [r for r in replies if "error" in r]
    assert {r["client"] for r in errors} == {1} and all("nothing left to train" in r["error"] for r in errors)
    assert all(r["in_time"] and r["seconds"] <= 12.0 for r in errors)  # refused at once, not late
    for r in trained:
        assert r["client"] == 0 and r["cap_s"] == 12.0
        if r["in_time"]:
            assert r["samples"] > 0 and r["seconds"] <= 12.0 and r["trip_s"] >= 0.0
        if r["round"] == 1:  # round 1 reserved the trip measured before it, not the run's 2 s guess
            measured = REPLY_SAFETY * max(query["reply_paths"].values()) + REPLY_JITTER_S
            assert r["reply_reserve"] == pytest.approx(measured, abs=0.01)
    weights = torch.load(out / "global_model.pt")  # the packed weights, unpacked
    assert weights.keys() == digits_weights().keys() and weights["0.1.num_batches_tracked"].dtype == torch.int64
    summary = json.loads((out / "summary.json").read_text())
    assert [c["client"] for c in summary["clients"]] == [0, 1] and summary["clients"][0]["speed"] == 0.5
    assert summary["clients"][1]["in_time"] == 0 and summary["clients"][1]["errors"]
    assert "in time" in stdout and "nothing left to train" in stdout
    assert summary["client_processes"] == "warm"  # the default: each ClientApp process forked by the warm executor
    assert "timebudget client 0 round 2" in (out / "logs" / "executor_0.log").read_text()
    assert summary["supernode_poll_s"] == 0.2  # each SuperNode through timebudget's entry point, its waits shortened
    node_log = (out / "logs" / "supernode_0.log").read_text()
    assert "looks for messages every 0.2 s and for replies every 0.02 s" in node_log and "message in at" in node_log
    assert flower_processes(out) == []


@pytest.mark.parametrize("sig, processes, poll", [(signal.SIGINT, "warm", "0.2"), (signal.SIGKILL, "warm", "0.2"),
                                                  (signal.SIGINT, "fresh", "0")])
def test_ctrl_c_or_a_killed_launcher_leaves_no_process(tmp_path: Path, sig: int, processes: str, poll: str) -> None:
    """SIGINT, as Ctrl-C sends it to the launcher alone (SIGTERM takes the same path): the launcher stops everything
    and says so. SIGKILL: the launcher cannot act, and its processes (the warm executors' forked ClientApps too) end
    because their parent died. ``fresh`` with poll 0 is Flower's own SuperNode and SuperExec, unpatched."""
    out = tmp_path / "fed"
    proc = federated(out, "--clients", "2", "--rounds", "5", "--round-seconds", "30", "--client-processes", processes,
                     "--supernode-poll", poll)
    deadline = time.monotonic() + 120
    while not (out / "logs" / "serverapp.log").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert flower_processes(out), "the deployment did not start"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in stderr
        assert flower_processes(out) == []
        return
    deadline = time.monotonic() + 30
    while flower_processes(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert flower_processes(out) == []
