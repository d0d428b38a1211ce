"""An informer recovers from broken watches and expired resourceVersions without losing
an update; driven by a scripted source (no stack)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import urllib3

from dispatcher.clusters import Informer, ListResult, WatchOptions
from dispatcher.errors import ApiError, ClusterUnavailable
from dispatcher.metrics import sample_value

OPTIONS = WatchOptions(backoff_base_seconds=0.01, backoff_max_seconds=0.02)


def pod(name: str, rv: int, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "resourceVersion": str(rv),
        },
        "status": {"phase": phase},
    }


def line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class ScriptedResponse:
    """A watch stream: the given chunks, then an error, or a block until closed."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.closed = threading.Event()

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self.chunks
        if self.error is not None:
            raise self.error
        self.closed.wait(10)
        raise urllib3.exceptions.ProtocolError("closed")

    def close(self) -> None:
        self.closed.set()

    def release_conn(self) -> None:
        pass


class ScriptedSource:
    cluster = "fake"

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.watched_from: list[str] = []
        self.list_calls = 0

    def list_objects(self, resource: str, **kwargs: Any) -> ListResult:
        self.list_calls += 1
        item = self.lists.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def watch(self, resource: str, *, resource_version: str, **kwargs: Any) -> Any:
        self.watched_from.append(resource_version)
        item = self.watches.pop(0) if self.watches else ScriptedResponse([])
        if isinstance(item, Exception):
            raise item
        return item


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj["metadata"]
        self.events.append((kind, meta["name"], meta["resourceVersion"]))


def run(source: ScriptedSource, until: Any, timeout: float = 5) -> tuple[Informer, Recorder]:
    recorder = Recorder()
    informer = Informer(
        source, "pods", name="pods-test", handler=recorder, options=OPTIONS, draw=lambda: 0.5
    )
    informer.start()
    deadline = time.monotonic() + timeout
    try:
        while not until(informer, recorder):
            assert time.monotonic() < deadline, f"stuck: {recorder.events}"
            time.sleep(0.01)
    finally:
        informer.stop()
        assert informer.join(5)
    return informer, recorder


def restarts(reason: str) -> float:
    labels = {"cluster": "fake", "resource": "pods-test", "reason": reason}
    return sample_value("dispatcher_watch_restarts_total", labels)


def test_an_error_event_410_in_the_stream_relists_and_reports_what_changed_meanwhile() -> None:
    source = ScriptedSource(
        lists=[
            ListResult([pod("a", 1), pod("b", 2)], "10"),
            ListResult([pod("a", 30, "Succeeded"), pod("c", 31)], "40"),
        ],
        watches=[
            ScriptedResponse(
                [line("ADDED", pod("x", 11)), line("ERROR", {"kind": "Status", "code": 410})]
            )
        ],
    )
    expired = restarts("expired")
    informer, recorder = run(source, lambda i, r: len(source.watched_from) >= 2)
    assert recorder.events == [
        ("ADDED", "a", "1"),
        ("ADDED", "b", "2"),
        ("ADDED", "x", "11"),
        # relisted after 410: everything that happened while the watch was gone
        ("DELETED", "b", "2"),
        ("DELETED", "x", "11"),
        ("MODIFIED", "a", "30"),
        ("ADDED", "c", "31"),
    ]
    assert source.watched_from == ["10", "40"]
    assert {p["metadata"]["name"] for p in informer.items()} == {"a", "c"}
    assert restarts("expired") == expired + 1


def test_a_410_status_on_opening_the_watch_also_relists() -> None:
    gone = ApiError("watch pods: HTTP 410 Expired", cluster="fake", status=410)
    source = ScriptedSource(
        lists=[ListResult([pod("a", 1)], "10"), ListResult([], "50")],
        watches=[gone],
    )
    _, recorder = run(source, lambda i, r: len(source.watched_from) >= 2)
    assert source.watched_from == ["10", "50"]
    assert recorder.events == [("ADDED", "a", "1"), ("DELETED", "a", "1")]


def test_a_broken_stream_reconnects_from_the_last_bookmark_without_relisting() -> None:
    broken = urllib3.exceptions.ProtocolError("connection broken")
    source = ScriptedSource(
        lists=[ListResult([pod("a", 1)], "10")],
        watches=[
            ScriptedResponse([line("BOOKMARK", {"metadata": {"resourceVersion": "25"}})], broken),
            ClusterUnavailable("watch pods: connection refused", cluster="fake"),
            ScriptedResponse([line("MODIFIED", pod("a", 26))]),
        ],
    )
    informer, recorder = run(source, lambda i, r: len(r.events) == 2)
    assert source.watched_from == ["10", "25", "25"]
    assert source.list_calls == 1
    assert recorder.events == [("ADDED", "a", "1"), ("MODIFIED", "a", "26")]
    assert informer.resource_version == "26"


def test_a_failing_handler_does_not_stop_the_informer() -> None:
    source = ScriptedSource(
        lists=[ListResult([pod("a", 1), pod("b", 2)], "10")],
        watches=[ScriptedResponse([line("ADDED", pod("c", 11))])],
    )
    seen: list[str] = []

    def handler(kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        seen.append(obj["metadata"]["name"])
        if obj["metadata"]["name"] == "a":
            raise RuntimeError("bug in a listener")

    informer = Informer(source, "pods", name="pods-test", handler=handler, options=OPTIONS)
    informer.start()
    deadline = time.monotonic() + 5
    while "c" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    informer.stop()
    assert informer.join(5)
    assert seen == ["a", "b", "c"]
