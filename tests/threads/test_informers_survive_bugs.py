"""An informer's thread survives what its loop does not expect: the supervisor logs and
counts the failure, the watch is reported disconnected, and the loop resumes from the
resourceVersion it had (nothing is listed twice, no update lost). Scripted source, no stack.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import structlog
import urllib3

from dispatcher.clusters import Informer, ListResult, WatchOptions
from dispatcher.metrics import sample_value
from dispatcher.supervise import Supervisor, SupervisorPolicy


def pod(name: str, rv: int) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(rv)}
    return {"metadata": meta}


class Stream:
    """One watch response: the given lines, then open until closed."""

    def __init__(self, *events: dict[str, Any]) -> None:
        self.lines = [json.dumps(e).encode() + b"\n" for e in events]
        self.closed = threading.Event()

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self.lines
        self.closed.wait(10)
        raise urllib3.exceptions.ProtocolError("closed")

    def close(self) -> None:
        self.closed.set()

    def release_conn(self) -> None:
        pass


class Source:
    cluster = "bugs"

    def __init__(self) -> None:
        self.list_calls = 0
        self.watched_from: list[str] = []

    def list_objects(self, resource: str, **kwargs: Any) -> ListResult:
        self.list_calls += 1
        return ListResult([pod("a", 1)], "10")

    def watch(self, resource: str, *, resource_version: str, **kwargs: Any) -> Any:
        self.watched_from.append(resource_version)
        return Stream({"type": "ADDED", "object": pod("b", 11)})


class Health:
    """Stands in for ``ClusterHealth``; records what the informer reports."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def watch_connected(self, name: str) -> None:
        self.calls.append("connected")

    def watch_disconnected(self, name: str, error: BaseException | None = None) -> None:
        self.calls.append("disconnected")

    def watch_data(self, name: str) -> None:
        self.calls.append("data")


def test_an_unexpected_error_restarts_the_loop_from_the_last_resource_version() -> None:
    draws = 0

    def draw() -> float:
        nonlocal draws
        draws += 1
        if draws == 1:  # the first watch's timeout spread: a bug, say
            raise ZeroDivisionError("a bug in the loop")
        return 0.5

    sleeps: list[float] = []
    supervisor = Supervisor(SupervisorPolicy(max_failures=2), wait=sleeps.append)
    seen: list[str] = []
    b_seen = threading.Event()

    def handler(kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        seen.append(f"{kind} {obj['metadata']['name']}")
        if obj["metadata"]["name"] == "b":
            b_seen.set()

    source, health = Source(), Health()
    informer = Informer(
        source,
        "pods",
        name="pods-test",
        handler=handler,
        options=WatchOptions(backoff_base_seconds=0.25, backoff_max_seconds=1.0),
        health=health,  # type: ignore[arg-type]
        supervisor=supervisor,
        draw=draw,
    )
    thread = "kd-informer-bugs-pods-test"
    before = sample_value("dispatcher_thread_restarts_total", {"thread": thread})
    with structlog.testing.capture_logs() as logs:
        informer.start()
        try:
            assert b_seen.wait(5), f"the informer did not resume: {seen}"
        finally:
            informer.stop()
            assert informer.join(5)
    assert seen == ["ADDED a", "ADDED b"]
    assert source.list_calls == 1, "resumed from its resourceVersion, no relist"
    assert source.watched_from == ["10"]
    assert health.calls[:2] == ["connected", "disconnected"]
    assert sample_value("dispatcher_thread_restarts_total", {"thread": thread}) == before + 1
    assert [e["thread"] for e in logs if e["event"] == "thread.failed"] == [thread]
    # The supervisor's backoff follows the watch options (base 0.25 s, jitter ±50%).
    assert len(sleeps) == 1
    assert 0.125 <= sleeps[0] <= 0.375
    assert supervisor.healthy() == (True, "ok")


class ClosedUnderneath(Stream):
    """What urllib3 does when another thread closed the response: its file is gone."""

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self.lines
        self.closed.wait(10)
        raise AttributeError("'NoneType' object has no attribute 'read'")


class ClosingSource(Source):
    def watch(self, resource: str, *, resource_version: str, **kwargs: Any) -> Any:
        self.watched_from.append(resource_version)
        name = f"w{len(self.watched_from)}"
        return ClosedUnderneath({"type": "ADDED", "object": pod(name, 10 + len(self.watched_from))})


def test_a_watch_closed_to_reconnect_resumes_at_once_and_is_no_failure() -> None:
    source = ClosingSource()
    sleeps: list[float] = []
    supervisor = Supervisor(wait=sleeps.append)
    seen = {name: threading.Event() for name in ("w1", "w2")}

    def handler(kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if obj["metadata"]["name"] in seen:
            seen[obj["metadata"]["name"]].set()

    informer = Informer(source, "pods", name="pods-closed", handler=handler, supervisor=supervisor)
    with structlog.testing.capture_logs() as logs:
        informer.start()
        try:
            assert seen["w1"].wait(5)
            informer.reconnect()
            assert seen["w2"].wait(5), "no second watch after the reconnect"
        finally:
            informer.stop()
            assert informer.join(5)
    assert source.watched_from == ["10", "11"]
    assert [e for e in logs if e["event"] == "thread.failed"] == []
    assert sleeps == [], "a reconnect we asked for is no failure: no backoff"
    assert supervisor.healthy() == (True, "ok")
