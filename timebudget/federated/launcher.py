"""``timebudget federated``: a real Flower deployment on 127.0.0.1 (SuperLink, one SuperNode per client, the
ServerApp started with ``flwr run``), the way Flower's own end-to-end tests run one without Ray.

Every process is started in a session of its own, and on success, error, Ctrl-C or SIGTERM its whole process group
(the SuperExec and ``flwr-clientapp``/``flwr-serverapp`` processes it started included) is terminated, then killed,
so nothing is left behind. Ports are found free by binding to port 0. No flwr import here: without flwr the command
is refused in one line.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import artifacts
from ..errors import TimebudgetError
from . import executor, supernode
from .partition import positive_number
from .settings import MAX_LOCAL_PASSES, REPLY_RESERVE_S, WEIGHTINGS, NodeSettings, RunSettings

CLIENT_PROCESSES = ("warm", "fresh")
INSTALL_HINT = "timebudget federated needs Flower: pip install 'timebudget[federated]' (flwr>=1.21,<1.43)"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
APP_TOML = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "timebudget-federated"
version = "1.0.0"
description = "timebudget clients under a round deadline"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "timebudget"

[tool.flwr.app.components]
serverapp = "timebudget.federated.server:app"
clientapp = "timebudget.federated.client:app"

[tool.flwr.app.config]
{config}
"""


def add_parser(sub: Any) -> None:
    f = sub.add_parser(
        "federated",
        help="a Flower federation on 127.0.0.1 whose clients train until each round's deadline",
        description="Start a SuperLink, one SuperNode per client and the ServerApp (FedAvg, the round's cap as its "
        "timeout, central evaluation after each round) on 127.0.0.1, run the rounds, and stop every process. Writes "
        "OUT/rounds.jsonl and OUT/summary.json and prints a table. Needs the federated extra (flwr).",
    )
    f.add_argument("--clients", type=int, default=2, help="number of clients (SuperNodes), default 2")
    f.add_argument("--rounds", type=int, default=3, help="number of rounds, default 3")
    f.add_argument("--round-seconds", dest="round_seconds", type=float, default=10.0,
                   help="each round's cap: the server's timeout and every client's deadline (default 10)")
    f.add_argument("--data", default="digits", help="any --data of timebudget train (default digits)")
    f.add_argument("--data-dir", dest="data_dir", default="", metavar="DIR")
    f.add_argument("--model", default="", help="any --model of timebudget train (default from the data)")
    f.add_argument("--strategy", default="", help="sample selection on each client (default: timebudget train's)")
    f.add_argument("--partition", default="iid", help="iid (default) or dirichlet:ALPHA (label skew)")
    f.add_argument("--client-speed", dest="client_speed", default="",
                   help="comma-separated speed per client, e.g. 1,1,0.25 (0.25: four times slower); default all 1")
    f.add_argument("--client-caps", dest="client_caps", default="",
                   help="comma-separated cap in seconds per client, empty for none, e.g. 20,,10")
    f.add_argument("--mode", default="timebudget", choices=("timebudget", "epochs"),
                   help="timebudget (default): train until the deadline, or --max-local-passes passes if sooner; "
                   "epochs: a fixed number of local epochs "
                   "(Flower's quickstart), for comparison")
    f.add_argument("--local-epochs", dest="local_epochs", type=int, default=1, help="epochs per round in epochs mode")
    f.add_argument("--lr-decay", dest="lr_decay", default="round", choices=("round", "federation"),
                   help="round (default): the learning rate decays to zero within each round; federation: one linear "
                   "decay across all rounds")
    f.add_argument("--max-local-passes", dest="max_local_passes", type=float, default=MAX_LOCAL_PASSES, metavar="N",
                   help="timebudget mode: at most about N passes over the client's data per round, so it answers early "
                   f"instead of drifting toward its own labels (default {MAX_LOCAL_PASSES:g}; 0: train until the "
                   "deadline)")
    f.add_argument("--weighting", default="work", choices=WEIGHTINGS,
                   help="FedAvg's weight of each reply (num-examples): work (default), the samples it trained this "
                   "round; data, the size of the client's shard, as in FedAvg's paper and Flower's quickstart")
    f.add_argument("--reply-reserve", dest="reply_reserve", type=float, default=REPLY_RESERVE_S, metavar="SECONDS",
                   help="seconds each client keeps for its reply's trip to the server when the server has measured no "
                   "trip yet (the ServerApp measures it before round 1; this is for when that query found no "
                   f"client; default {REPLY_RESERVE_S:g})")
    f.add_argument("--client-processes", dest="client_processes", default="warm", choices=CLIENT_PROCESSES,
                   help="warm (default): each SuperNode in --isolation process with timebudget's executor, which forks "
                   "every ClientApp process from one that imported flwr, torch and timebudget once; fresh: Flower's "
                   "own, a new flwr-clientapp process (interpreter and imports) per message")
    f.add_argument("--supernode-poll", dest="supernode_poll", type=float, default=supernode.POLL_S, metavar="SECONDS",
                   help="seconds between a SuperNode's looks for a round's message and for its ClientApp's reply "
                   f"(default {supernode.POLL_S:g}; flwr 1.42 hard-codes 3 s and 0.5 s, which the launcher shortens "
                   "through timebudget.federated.supernode, a loopback-only cost of one request per poll); 0: "
                   "Flower's own flower-supernode and waits, as a SuperNode someone else runs")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config field of every client's run, repeatable (e.g. --set batch_size=32)")
    f.add_argument("--out", required=True, metavar="DIR", help="output folder (rounds.jsonl, summary.json, logs/)")
    f.add_argument("--quiet", action="store_true", help="no table")


def per_client(text: str, clients: int, name: str, allow_empty: bool) -> list[float | None]:
    """``1,1,0.25`` as one positive number (or, where allowed, nothing) per client; a wrong length is an error."""
    if not text:
        return [None] * clients
    items = text.split(",")
    if len(items) != clients:
        raise TimebudgetError(f"--{name} has {len(items)} values for {clients} clients; give one per client")
    values: list[float | None] = []
    for item in items:
        if not item.strip() and allow_empty:
            values.append(None)
            continue
        value = positive_number(item)
        if value is None:
            raise TimebudgetError(f"--{name}: {item!r} is not a positive number")
        values.append(value)
    return values


def settings_from_args(args: argparse.Namespace) -> tuple[RunSettings, list[NodeSettings]]:
    out = Path(args.out).resolve()
    run = RunSettings(out=str(out), rounds=args.rounds, round_seconds=args.round_seconds, clients=args.clients,
                      data=args.data, data_dir=str(Path(args.data_dir).resolve()) if args.data_dir else "",
                      model=args.model, strategy=args.strategy, partition=args.partition, seed=args.seed,
                      mode=args.mode, local_epochs=args.local_epochs, lr_decay=args.lr_decay,
                      reply_reserve=args.reply_reserve, max_local_passes=args.max_local_passes,
                      weighting=args.weighting,
                      overrides=" ".join(args.set)).validate()
    speeds = per_client(args.client_speed, run.clients, "client-speed", allow_empty=False)
    caps = per_client(args.client_caps, run.clients, "client-caps", allow_empty=True)
    nodes = [NodeSettings(i, run.clients, speeds[i] or 1.0, caps[i]) for i in range(run.clients)]
    return run, nodes


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (bound to port 0 together, so they differ), for the processes to take."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ensure_free(port: int) -> None:
    """One clear line, instead of a process dying on its bind, when a port was taken since it was found free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise TimebudgetError(f"port {port} on 127.0.0.1 is in use; run again to pick other free ports") from None


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def flower_tool(name: str) -> str:
    """A Flower executable: next to this Python's (the same environment), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise TimebudgetError(f"{name} not found next to {sys.executable} or on PATH; {INSTALL_HINT}")
    return found


def toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML basic strings, integers, floats and booleans read like JSON


class Deployment:
    """The processes of one loopback federation, each in its own session so the group can be stopped as a whole."""

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        self.out, self.env = out, env
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own, logging to ``logs/<name>.log``. Ctrl-C and SIGTERM are held back
        until the process is on the list :meth:`stop` works through: arriving inside ``Popen``, they left a forked
        child that no one stopped (its pipe kept a caller waiting after the launcher had exited)."""
        with (self.logs / f"{name}.log").open("wb") as log:
            held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.out,
                                        preexec_fn=_term_with_parent)
                self.procs.append((name, proc))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return proc

    def wait_listening(self, name: str, proc: subprocess.Popen[bytes], ports: Sequence[int]) -> None:
        self.wait_until(name, proc, lambda: all(listening(p) for p in ports),
                        f"listening on 127.0.0.1:{','.join(map(str, ports))}", " (a port in use?)")

    def wait_until(self, name: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str,
                   hint: str = "") -> None:
        """Wait until ``ready()``; one line naming ``name`` and its log when it exits or takes too long first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if proc.poll() is not None:
                raise TimebudgetError(f"{name} exited with code {proc.returncode} before it was {what}{hint}: "
                                      f"{self.last_line(name)}")
            if time.monotonic() > deadline:
                raise TimebudgetError(f"{name} was not {what} within {READY_TIMEOUT_S:g} s; see "
                                      f"{self.logs / (name + '.log')}")
            time.sleep(0.1)

    def last_line(self, name: str) -> str:
        lines = [l for l in (self.logs / f"{name}.log").read_text(errors="replace").splitlines() if l.strip()]
        return lines[-1].strip() if lines else "(no output)"

    def stop(self) -> None:
        """SIGTERM to every process group, then SIGKILL to what is still alive after a grace period: the groups, and
        any process of this deployment that left them (flwr 1.42's SuperLink starts its SuperExec in a session of
        its own), found by the ``FLWR_HOME`` in its environment."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, proc in reversed(self.procs):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGKILL:
                for pid in deployment_pids(self.env["FLWR_HOME"]):
                    _kill(pid, sig)
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and self.alive():
                for _, proc in self.procs:
                    proc.poll()
                time.sleep(0.05)
            if not self.alive():
                break
        for _, proc in self.procs:
            proc.poll()

    def alive(self) -> bool:
        return any(group_alive(p.pid) for _, p in self.procs) or bool(deployment_pids(self.env["FLWR_HOME"]))


def deployment_pids(flwr_home: str) -> list[int]:
    """Live processes (not zombies) whose environment holds this deployment's ``FLWR_HOME``: every process it started,
    however deep, since each inherits the environment."""
    marker = f"FLWR_HOME={flwr_home}".encode()
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue
        if marker in environ and not _zombie(pid):
            found.append(pid)
    return found


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _term_with_parent() -> None:
    """In the child before exec (Linux): the stop signals the launcher held back are let through again, and SIGTERM
    comes when the launcher dies, even by SIGKILL, so nothing outlives it."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_pgid(pid) == pgid and not _zombie(pid) for pid in _pids())


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()] if os.path.isdir("/proc") else []


def _stat(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].decode().split()
    except OSError:
        return []


def _pgid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[2]) if len(fields) > 2 else None


def _zombie(pid: int) -> bool:
    fields = _stat(pid)
    return not fields or fields[0] == "Z"


def deploy(run: RunSettings, nodes: list[NodeSettings], client_processes: str = "warm",
           poll_s: float = supernode.POLL_S) -> float:
    """Run the federation to its end; returns its wall seconds. Raises TimebudgetError when it cannot run.
    ``client_processes``: ``warm`` (each SuperNode's ClientApp processes forked by :mod:`.executor` from one that has
    done the imports) or ``fresh`` (Flower's SuperExec, one new ``flwr-clientapp`` per message). ``poll_s``: the
    SuperNodes' wait between looks for messages (:mod:`.supernode`); 0 runs Flower's ``flower-supernode`` as it is."""
    if not (poll_s >= 0 and math.isfinite(poll_s)):
        raise TimebudgetError(f"--supernode-poll must be a number of seconds >= 0 (0: Flower's own), got {poll_s!r}")
    if importlib.util.find_spec("flwr") is None:
        raise TimebudgetError(INSTALL_HINT)
    if client_processes == "warm" and (why := executor.supported()) is not None:
        raise TimebudgetError(f"--client-processes warm cannot run: {why}; use --client-processes fresh")
    out = Path(run.out)
    if (out / "rounds.jsonl").exists():
        raise TimebudgetError(f"--out {str(out)!r} already holds a federated run (rounds.jsonl); choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    tools = {name: flower_tool(name) for name in ("flower-superlink", "flower-supernode", "flwr")}
    link_port, *node_ports = free_ports(1 + len(nodes))  # flwr 1.42: one HTTP port for Fleet, Control and Runtime
    home = out / ".flwr"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                      f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')
    app = out / "app"
    app.mkdir(exist_ok=True)
    config = "\n".join(f"{k} = {toml_value(v)}" for k, v in run.to_run_config().items())
    (app / "pyproject.toml").write_text(APP_TOML.format(config=config))
    package_root = str(Path(__file__).resolve().parents[2])  # this timebudget, also in Flower's subprocesses
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1", "FLWR_TELEMETRY_ENABLED": "0",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(nodes)))),
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
           "PATH": os.pathsep.join((str(Path(tools["flwr"]).parent), os.environ.get("PATH", "")))}  # flower-superexec
    deployment = Deployment(out, env)
    # Both stop signals end the deployment, SIGINT too when the launcher inherited it ignored (started with `&` from a
    # script, or under nohup), where Python would not turn it into KeyboardInterrupt.
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    t0 = time.monotonic()
    try:
        ensure_free(link_port)
        link = deployment.start("superlink", [
            tools["flower-superlink"], "--insecure", "--database", ":flwr-in-memory:", "--host", "127.0.0.1",
            "--port", str(link_port), "--disable-runtime-dependency-installation"])
        deployment.wait_listening("superlink", link, [link_port])
        isolation = "process" if client_processes == "warm" else "subprocess"
        start_node = ([sys.executable, "-m", "timebudget.federated.supernode", "--poll-seconds", str(poll_s)]
                      if poll_s > 0 else [tools["flower-supernode"]])
        for node, port in zip(nodes, node_ports):
            ensure_free(port)
            deployment.start(f"supernode_{node.partition_id}", [
                *start_node, "--insecure", "--superlink", f"127.0.0.1:{link_port}", "--host", "127.0.0.1",
                "--port", str(port), "--node-config", node.to_node_config(), "--max-retries", "0",
                "--isolation", isolation])
        for node, port in zip(nodes, node_ports):
            name = f"supernode_{node.partition_id}"
            deployment.wait_listening(name, dict(deployment.procs)[name], [port])
            if client_processes == "warm":
                deployment.start(f"executor_{node.partition_id}", [
                    sys.executable, "-m", "timebudget.federated.executor", "--runtime-api-address",
                    f"127.0.0.1:{port}"])
        if client_processes == "warm":  # every executor has done its imports before the first round is sent
            for node in nodes:
                name = f"executor_{node.partition_id}"
                log = deployment.logs / f"{name}.log"
                deployment.wait_until(name, dict(deployment.procs)[name],
                                      lambda: executor.READY in log.read_text(errors="replace"),
                                      "ready (its imports done)")
        flwr = deployment.start("serverapp", [tools["flwr"], "run", str(app), "loopback", "--stream"])
        limit = READY_TIMEOUT_S + run.rounds * (run.round_seconds + 30.0)
        try:
            code = flwr.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise TimebudgetError(f"the federation did not finish within {limit:g} s; see {deployment.logs}") from None
        if code != 0 or not (out / "global_model.pt").exists():
            raise TimebudgetError(f"the ServerApp failed (flwr run exited {code}): {deployment.last_line('serverapp')}"
                                  f"; logs in {deployment.logs}")
        return time.monotonic() - t0
    finally:
        deployment.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def summarise(run: RunSettings, nodes: list[NodeSettings], wall_s: float, client_processes: str,
              poll_s: float | None = None) -> dict[str, Any]:
    """summary.json: per client the share of replies in time, samples and seconds per round, and the seconds it
    idled (the round lasted until the server's last in-time reply or its timeout; a client idles after its reply)."""
    records = [json.loads(l) for l in (Path(run.out) / "rounds.jsonl").read_text().splitlines() if l.strip()]
    replies = [r for r in records if "node" in r]
    rounds = {r["round"]: r for r in records if "test_metrics" in r}
    round_end = {}
    for r in range(1, run.rounds + 1):
        mine = [x for x in replies if x["round"] == r]
        late = any(not x["in_time"] for x in mine)
        round_end[r] = run.round_seconds if late or not mine else max(x["seconds"] for x in mine)
    clients = []
    for node in nodes:
        mine = [x for x in replies if x["client"] == node.partition_id]
        ok = [x for x in mine if x["in_time"] and "error" not in x]
        clients.append({
            "client": node.partition_id, "speed": node.speed, "cap_s": node.cap_seconds,
            "replies": len(mine), "in_time": len(ok), "in_time_pct": 100.0 * len(ok) / max(len(mine), 1),
            "errors": [x["error"] for x in mine if "error" in x],
            "samples_per_round": sum(x["samples"] or 0 for x in ok) / max(len(ok), 1),
            "passes_per_round": sum(x.get("passes") or 0 for x in ok) / max(len(ok), 1),
            "seconds_per_round": sum(x["seconds"] for x in ok) / max(len(ok), 1),
            "idle_s": sum(round_end[x["round"]] - x["seconds"] for x in ok),
            # before its first step: Flower's delivery and the ClientApp process's start-up (median), and the longest
            # trip of a reply from the client's return to the server's receipt
            "start_s": _median([x["delivery_s"] + x["startup_s"] for x in mine if "delivery_s" in x]),
            "trip_s": max((x["trip_s"] for x in mine if "trip_s" in x), default=None),
        })
    final = rounds.get(run.rounds, {})
    summary = {"settings": run.to_run_config(), "client_processes": client_processes, "supernode_poll_s": poll_s,
               "wall_s": round(wall_s, 2),
               "clients": clients,
               "unattributed_replies": sum(1 for x in replies if x["client"] is None),
               "rounds": [{"round": r, "test_metrics": rec["test_metrics"], "elapsed_s": rec["elapsed_s"]}
                          for r, rec in sorted(rounds.items())],
               "final_test_metrics": final.get("test_metrics")}
    artifacts.write_json(Path(run.out) / "summary.json", summary)
    return summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(summary: dict[str, Any]) -> str:
    lines = ["client  speed  cap_s  in time  samples/round  seconds/round  idle_s  start_s  trip_s  errors"]
    for c in summary["clients"]:
        cap = "-" if c["cap_s"] is None else f"{c['cap_s']:g}"
        errors = c["errors"]
        lines.append(f"{c['client']:>6}  {c['speed']:>5g}  {cap:>5}  {c['in_time']:>3}/{c['replies']:<3}  "
                     f"{c['samples_per_round']:>13.0f}  {c['seconds_per_round']:>13.2f}  {c['idle_s']:>6.1f}  "
                     f"{_seconds(c['start_s']):>7}  {_seconds(c['trip_s']):>6}  "
                     f"{f'{len(errors)}, the last: {errors[-1]}' if errors else '-'}")
    lines.append("round  " + "  ".join(f"{r['round']:>6}" for r in summary["rounds"]))
    keys = list(summary["rounds"][0]["test_metrics"]) if summary["rounds"] else []
    for key in keys:
        lines.append(f"{key[:5]:<5}  " + "  ".join(f"{r['test_metrics'][key]:>6.4f}" for r in summary["rounds"]))
    lines.append(f"wall {summary['wall_s']:.1f} s")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("flwr") is None:
        raise TimebudgetError(INSTALL_HINT)
    run, nodes = settings_from_args(args)
    wall_s = deploy(run, nodes, args.client_processes, args.supernode_poll)
    summary = summarise(run, nodes, wall_s, args.client_processes, args.supernode_poll)
    if not args.quiet:
        print(table(summary))
    return 0
