"""The SuperNode entry point that shortens flwr's hard-coded waits (``timebudget.federated.supernode``); the real
SuperNodes started through it are in ``test_federated.py``'s loopback deployment."""
from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

pytest.importorskip("flwr")

from flwr.supercore.inflatable import inflatable_utils  # noqa: E402
from flwr.supernode import start_client_internal  # noqa: E402

from timebudget.federated import supernode  # noqa: E402


def test_a_capped_sleep_shortens_the_waits_for_messages_to_the_poll_and_the_local_waits_further() -> None:
    asked: list[float] = []
    capped = supernode.CappedSleep(0.2, local=0.02, sleep=asked.append)
    capped.sleep(3)  # the SuperNode's wait between asks to the SuperLink for a message
    capped.sleep(0.5)  # its wait between looks in its own memory for the ClientApp's reply or its objects
    capped.sleep(0.01)
    assert asked == [0.2, 0.02, 0.01]
    assert capped.monotonic is time.monotonic and capped.time is time.time
    asked.clear()
    supernode.CappedSleep(0.01, local=0.02, sleep=asked.append).sleep(0.5)  # never longer than the poll
    assert asked == [0.01]


def test_the_supernode_stamps_each_message_in_and_each_reply_out(capsys: pytest.CaptureFixture[str]) -> None:
    calls = []
    loop = SimpleNamespace(_pull_and_store_message=lambda **kw: calls.append("pull") or kw.get("run"),
                           _push_messages=lambda **kw: calls.append("push"))
    assert supernode.stamp_messages(loop) is None
    assert loop._pull_and_store_message(run=None) is None  # no message: no stamp
    assert loop._pull_and_store_message(run=7) == 7
    loop._push_messages()
    assert calls == ["pull", "pull", "push"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "message in at" in lines[0] and "reply out at" in lines[1]
    assert abs(float(lines[1].rsplit(" ", 1)[1]) - time.time()) < 60
    assert "no _pull_and_store_message" in supernode.stamp_messages(SimpleNamespace())


@pytest.mark.parametrize("version, allowed", [("1.21.0", True), ("1.42.0", True), ("1.20.3", False),
                                              ("1.43.0", False), ("2.0.0", False), ("dev", False)])
def test_only_the_declared_flwr_versions_are_patched(version: str, allowed: bool) -> None:
    why = supernode.version_supported(version)
    assert (why is None) == allowed
    if not allowed:
        assert version in why


def test_the_supernode_loop_sleeps_at_most_the_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_client_internal, "time", time)  # restored after the test
    assert supernode.shorten_poll(0.1) is None
    assert isinstance(start_client_internal.time, supernode.CappedSleep)
    assert start_client_internal.time.poll == 0.1
    assert time.sleep is not start_client_internal.time.sleep  # no other module's time is touched


def test_a_flwr_outside_the_range_keeps_its_own_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr

    monkeypatch.setattr(start_client_internal, "time", time)
    monkeypatch.setattr(flwr, "__version__", "1.43.0", raising=False)
    assert "outside the declared" in supernode.shorten_poll(0.1)
    assert start_client_internal.time is time


@pytest.fixture
def pull_defaults() -> Iterator[None]:
    functions = (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    saved = [dict(fn.__kwdefaults__) for fn in functions]
    yield
    for fn, kw in zip(functions, saved):
        fn.__kwdefaults__.clear()
        fn.__kwdefaults__.update(kw)


def test_the_object_pulls_back_off_from_a_short_first_wait(pull_defaults: None) -> None:
    assert supernode.shorten_pull_backoff(0.05, 0.5) is None
    for fn in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        assert fn.__kwdefaults__["initial_backoff"] == 0.05 and fn.__kwdefaults__["backoff_cap"] == 0.5


def test_a_poll_that_is_not_positive_is_one_line() -> None:
    with pytest.raises(SystemExit, match="--poll-seconds must be a positive number"):
        supernode.main(["--poll-seconds", "0", "--insecure"])
