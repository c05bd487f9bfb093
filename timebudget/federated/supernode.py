"""``flower-supernode`` with a shorter wait between its looks for messages, for the loopback launcher.

flwr 1.42's SuperNode (``flwr.supernode.start_client_internal``) asks the SuperLink for a message, and when there is
none it sleeps a hard-coded ``time.sleep(3)`` before it asks again; while a ClientApp works it looks for the reply
every 0.5 s. No CLI flag, environment variable or node/run config of flwr 1.42 changes either: a round's training
message waits up to 3 s at the SuperLink before its node even sees it, which at a 5 s cap was most of the round.

This entry point is Flower's own ``flower-supernode`` (same arguments, same main) with those waits shortened to
``--poll-seconds``: it replaces the ``time`` that module sees by one whose ``sleep`` is capped at the poll (nothing
else of ``time`` changes, and no other module is touched), and shortens the first back-off of the object pulls (the
message's arrays: 1 s, then doubling, when they are not there yet). A shorter poll costs one request to the SuperLink
per node per poll, which on 127.0.0.1 is cheap. It is guarded by the flwr versions the project declares and by the
code it expects to find; where either differs it says so in the SuperNode's log and runs Flower's own waits unchanged.
"""
from __future__ import annotations

import argparse
import sys
import time
import types
from collections.abc import Callable
from typing import Any

FLWR_RANGE = ((1, 21), (1, 43))  # the project's flwr>=1.21,<1.43
POLL_S = 0.2
LOCAL_WAIT_S = 0.02  # between a SuperNode's looks in its own memory (no request): flwr 1.42 waits 0.5 s
PULL_BACKOFF_S = (0.02, 0.1)  # the object pulls' first back-off and its cap (loopback); flwr 1.42: 1 s and 10 s
LOG_PREFIX = "timebudget supernode:"


class CappedSleep(types.ModuleType):
    """The ``time`` module as one module of Flower's sees it: every attribute is ``time``'s, except ``sleep``, which
    sleeps at most ``poll`` seconds where Flower sleeps a second or more (flwr 1.42: 3 s between its asks to the
    SuperLink for a message, a network request each time) and at most ``local`` seconds where it sleeps less (0.5 s
    between its looks in its own memory for the ClientApp's reply and for the reply's objects, which cost no request).
    The module's loops look again at once, so only the waits between looks shrink."""

    def __init__(self, poll: float, local: float = LOCAL_WAIT_S, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__("time")
        self.poll, self.local, self._sleep = poll, local, sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self._sleep(min(seconds, self.poll if seconds >= 1.0 else min(self.local, self.poll)))


def version_supported(version: str) -> str | None:
    """Why this entry point does not shorten flwr ``version``'s waits (``None``: it does)."""
    try:
        major_minor = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return f"flwr {version} is not a version this entry point can read"
    low, high = FLWR_RANGE
    if not low <= major_minor < high:
        return f"flwr {version} is outside the declared flwr>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    return None


def shorten_pull_backoff(initial_s: float = PULL_BACKOFF_S[0], cap_s: float = PULL_BACKOFF_S[1]) -> str | None:
    """Start the object pulls' exponential back-off at ``initial_s`` (capped at ``cap_s``) instead of flwr's 1 s: a
    ClientApp process that asks for the message's arrays before its SuperNode has them all otherwise waits 1 s, then
    2 s. Returns why it could not (``None``: done). In the process that pulls: the SuperNode, or a ClientApp process."""
    try:
        from flwr.supercore.inflatable import inflatable_utils
    except ImportError as exc:
        return f"no flwr.supercore.inflatable ({exc})"
    functions = [getattr(inflatable_utils, name, None)
                 for name in ("pull_objects", "pull_and_inflate_object_from_tree")]
    for fn in functions:
        if not (fn and fn.__kwdefaults__ and {"initial_backoff", "backoff_cap"} <= fn.__kwdefaults__.keys()):
            return "flwr's object pull has no initial_backoff/backoff_cap keywords here"
    for fn in functions:
        fn.__kwdefaults__.update(initial_backoff=initial_s, backoff_cap=cap_s)
    return None


def shorten_poll(poll_s: float) -> str | None:
    """Cap the sleeps of flwr's SuperNode loop (``start_client_internal``) at ``poll_s``. Returns why it could not
    (``None``: done)."""
    import flwr

    why = version_supported(getattr(flwr, "__version__", "unknown"))
    if why is not None:
        return why
    try:
        from flwr.supernode import start_client_internal as loop
    except ImportError as exc:
        return f"no flwr.supernode.start_client_internal ({exc})"
    if getattr(loop, "time", None) is not time:
        return "flwr.supernode.start_client_internal does not use the time module as expected"
    loop.time = CappedSleep(poll_s)  # type: ignore[attr-defined]
    return None


def stamp_messages(loop: Any) -> str | None:
    """Log the wall-clock second at which each message is in this SuperNode with its objects (``message in``) and at
    which its reply has gone to the SuperLink (``reply out``): one message is in flight at a time, so the k-th of each
    belongs to the k-th message, and with the server's and the ClientApp's own stamps they split a round's delivery
    and reply trip (``benchmarks/federated.py``). Returns why it could not (``None``: done)."""
    pull, push = getattr(loop, "_pull_and_store_message", None), getattr(loop, "_push_messages", None)
    if not (callable(pull) and callable(push)):
        return "flwr.supernode.start_client_internal has no _pull_and_store_message/_push_messages"

    def pulled(*args: Any, **kwargs: Any) -> Any:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            print(f"{LOG_PREFIX} message in at {time.time():.3f}", flush=True)
        return run_id

    def pushed(*args: Any, **kwargs: Any) -> None:
        push(*args, **kwargs)
        print(f"{LOG_PREFIX} reply out at {time.time():.3f}", flush=True)

    loop._pull_and_store_message, loop._push_messages = pulled, pushed
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m timebudget.federated.supernode", add_help=False,
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--poll-seconds", dest="poll_seconds", type=float, default=POLL_S)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not args.poll_seconds > 0:
        sys.exit(f"error: --poll-seconds must be a positive number, got {args.poll_seconds!r}")
    why = shorten_poll(args.poll_seconds)
    why_pull = shorten_pull_backoff()
    if why is None:
        from flwr.supernode import start_client_internal

        why_stamps = stamp_messages(start_client_internal)
        print(f"{LOG_PREFIX} looks for messages every {args.poll_seconds:g} s and for replies every "
              f"{min(LOCAL_WAIT_S, args.poll_seconds):g} s"
              + (f"; no timing stamps: {why_stamps}" if why_stamps else ""), flush=True)
    else:
        print(f"{LOG_PREFIX} Flower's own waits (3 s between looks for messages): {why}", flush=True)
    if why_pull is not None:
        print(f"{LOG_PREFIX} Flower's own object-pull back-off: {why_pull}", flush=True)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
