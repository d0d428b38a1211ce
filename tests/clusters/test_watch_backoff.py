"""An informer never reconnects or relists in a hot loop: a watch that ends at once having
delivered nothing, and 410s that follow each other with no event between them, back off
exponentially, as client-go's reflector does. Scripted source (fault injection, no stack);
the test waits for the calls it needs, then reads the gaps between them, which may only be
longer than the backoff under load, never shorter."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

from dispatcher.clusters import Informer, ListResult, WatchOptions
from dispatcher.errors import ApiError
from dispatcher.metrics import sample_value

BASE = 0.05
OPTIONS = WatchOptions(
    backoff_base_seconds=BASE, backoff_max_seconds=0.4, backoff_jitter=0.0, short_watch_seconds=1.0
)
CALLS = 6


class EndsAtOnce:
    """A watch response that ends cleanly before any event."""

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from ()

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class Source:
    def __init__(self, cluster: str, *, expire: bool) -> None:
        self.cluster = cluster
        self.expire = expire
        self.lists: list[float] = []
        self.watches: list[float] = []
        self.enough = threading.Event()

    def list_objects(self, resource: str, **kwargs: Any) -> ListResult:
        self.lists.append(time.monotonic())
        self._count()
        return ListResult([], str(len(self.lists)))

    def watch(self, resource: str, *, resource_version: str, **kwargs: Any) -> Any:
        self.watches.append(time.monotonic())
        self._count()
        if self.expire:
            raise ApiError("watch pods: HTTP 410 Expired", cluster=self.cluster, status=410)
        return EndsAtOnce()

    def _count(self) -> None:
        if len(self.watches if not self.expire else self.lists) >= CALLS:
            self.enough.set()


def follow(source: Source) -> None:
    informer = Informer(source, "pods", name="pods", handler=lambda *_: None, options=OPTIONS)
    informer.start()
    try:
        assert source.enough.wait(30), "the informer stopped calling"
    finally:
        informer.stop()
        assert informer.join(5)


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def test_a_watch_that_ends_at_once_with_nothing_backs_off_exponentially() -> None:
    source = Source("short-watch", expire=False)
    follow(source)
    waited = gaps(source.watches[:CALLS])
    expected = [min(0.4, BASE * 2**k) for k in range(CALLS - 1)]  # 0.05, 0.1, 0.2, 0.4, 0.4
    assert all(w >= 0.9 * e for w, e in zip(waited, expected, strict=True)), (waited, expected)
    assert len(source.lists) == 1, "a short watch resumes from its resourceVersion"
    restarts = sample_value(
        "dispatcher_watch_restarts_total",
        {"cluster": "short-watch", "resource": "pods", "reason": "short"},
    )
    assert restarts is not None
    assert restarts >= CALLS - 1


def test_410s_in_a_row_relist_at_once_the_first_time_then_back_off() -> None:
    source = Source("expiring", expire=True)
    follow(source)
    waited = gaps(source.lists[:CALLS])
    # The first 410 relists at once; each one after it, with no event between, waits longer.
    expected = [0.0] + [min(0.4, BASE * 2**k) for k in range(CALLS - 2)]
    assert all(w >= 0.9 * e for w, e in zip(waited, expected, strict=True)), (waited, expected)
