"""A SuperExec for a SuperNode in ``--isolation process`` that forks each ClientApp process from one that has already
imported flwr, torch and timebudget.

flwr 1.42 runs every message in a process of its own: the SuperExec (``flower-superexec``, which a SuperNode in
``--isolation subprocess`` starts itself) asks the SuperNode's Runtime API for a task, then starts ``flwr-clientapp
--token T``, which pulls that one task, runs the ClientApp and exits. Nothing in flwr 1.42 keeps a ClientApp process
for a second message (its warm executors are Kubernetes pods for agent, model and connector tasks only), so every
round paid the interpreter's start and the flwr, torch and timebudget imports: 2.7 to 4.6 s measured on 2 loaded
cores, inside the round's cap.

This process does what ``flower-superexec`` does for ClientApp tasks (poll ``AcquireTask``, one process per task,
each with its own token), but imports everything first and ``fork``s: the child runs Flower's own
``run_clientapp`` (the same pull, FAB install, app load, reply push and exit as ``flwr-clientapp``) with the modules
already in memory. The child is still a fresh process per message, so nothing of one round leaks into the next, and
the ClientApp still reads its start as its process's start (the fork). Fork is safe here because the parent runs no
threads and no torch operation (one OpenMP thread per process in this launcher).

The children share this process's group, so the launcher's stop reaches them; each also ends when this process
dies (``PR_SET_PDEATHSIG``, and flwr's own watch of ``--parent-pid``). Linux only (``fork``, ``/proc``); the launcher
falls back to Flower's own executor elsewhere or when this flwr lacks the Runtime API used here.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time
import traceback
from types import FrameType
from typing import Any

READY = "timebudget executor: imports done"  # its log's first line, which the launcher waits for
PULLED = "timebudget executor: message pulled at"
PUSHED = "timebudget executor: reply pushed at"
POLL_S = 0.05  # between AcquireTask calls; flower-superexec's default is 1 s (the launcher sets it to 0.1 s)


def supported() -> str | None:
    """Why this flwr cannot be served by this executor (``None``: it can): it needs ``fork`` and flwr's Runtime API
    (``AcquireTask`` and ``run_clientapp(runtime_api_address, token, ...)``, flwr 1.42)."""
    if not hasattr(os, "fork") or not os.path.isdir("/proc"):
        return "no fork() or /proc on this system"
    try:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # noqa: F401
        from flwr.supercore.runtime import RuntimeHttpClient  # noqa: F401
        from flwr.supernode.runtime.run_clientapp import run_clientapp  # noqa: F401
    except ImportError as exc:
        return f"this flwr has no Runtime API for it ({exc})"
    return None


class Children:
    """The ClientApp processes forked so far and not yet reaped."""

    def __init__(self) -> None:
        self.pids: set[int] = set()

    def reap(self) -> None:
        for pid in list(self.pids):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.pids.discard(pid)

    def stop(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stamp_child(runtime: Any) -> None:
    """Log the wall-clock seconds at which this ClientApp process holds its message (``pull_task_input``: the task,
    the message and its objects, pulled from the SuperNode) and at which its reply is with the SuperNode
    (``push_message``): with the SuperNode's and the server's stamps they split a round's delivery and reply trip
    (``benchmarks/federated.py``)."""
    for name, stamp in (("pull_task_input", PULLED), ("push_message", PUSHED)):
        step = getattr(runtime, name, None)
        if callable(step):
            setattr(runtime, name, _stamped(step, stamp))


def _stamped(step: Any, stamp: str) -> Any:
    def stamped(*args: Any, **kwargs: Any) -> Any:
        result = step(*args, **kwargs)
        print(f"{stamp} {time.time():.3f}", flush=True)
        return result

    return stamped


def run_child(address: str, token: str, parent: int) -> int:
    """In the forked child: Flower's ``flwr-clientapp`` for one task, with the imports already done. Returns the exit
    code (the caller leaves with ``os._exit``, so nothing the parent registered runs twice)."""
    from flwr.supernode.runtime import run_clientapp as runtime

    stamp_child(runtime)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent()
    try:
        runtime.run_clientapp(runtime_api_address=address, token=token, insecure=True, parent_pid=parent,
                              runtime_dependency_install=False)
        return 0
    except SystemExit as exc:  # flwr_exit ends the task this way
        return exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # noqa: BLE001 - any failure is this task's: print it, exit non-zero
        traceback.print_exc()
        return 1


def serve(address: str, poll_s: float = POLL_S) -> None:
    """Import what every ClientApp needs, then fork one child per ClientApp task the SuperNode at ``address`` hands
    out, until SIGTERM or SIGINT."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    import torch

    from . import client, local, wire  # noqa: F401 - the point of this process: flwr, torch, timebudget imported once
    from .supernode import LOG_PREFIX, shorten_pull_backoff

    # a child forked at once asks for the round's arrays before its SuperNode has pulled them all from the SuperLink,
    # and flwr's back-off would then wait 1 s, then 2 s; every child inherits the shorter one
    if (why := shorten_pull_backoff()) is not None:
        print(f"{LOG_PREFIX} Flower's own object-pull back-off: {why}", flush=True)

    # torch imports its compiler stack (torch._dynamo, sympy: 1 to 2 s here) when the first optimizer is built; no
    # tensor operation runs, so no thread starts before the forks
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # out of any call, a retried AcquireTask to a SuperNode already gone included

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    children = Children()
    runtime = RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker())
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    print(f"{READY}, serving the ClientApp tasks of {address}", flush=True)
    try:
        while True:
            children.reap()
            answer = runtime.AcquireTask(request)
            if not (answer.HasField("task") and answer.token):
                time.sleep(poll_s)
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child never returns into this loop, whatever happens in it
                code = 1
                try:
                    code = run_child(address, answer.token, os.getppid())
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.pids.add(pid)
    finally:
        children.stop()
        runtime.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timebudget.federated.executor", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    args = parser.parse_args(argv)
    why = supported()
    if why is not None:
        print(f"error: the warm executor cannot run: {why}", file=sys.stderr)
        return 2
    serve(args.runtime_api_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
