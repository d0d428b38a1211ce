"""Informers: list a resource, then watch it from the list's resourceVersion, forever.

One ``Informer`` keeps an up-to-date copy of the objects one list+watch selects (nodes, our
pods, other pods) and reports every change to a handler, on its own daemon thread:

- the watch asks for bookmarks (``allowWatchBookmarks``) so its resourceVersion stays fresh
  on quiet clusters, a server-side ``timeoutSeconds`` (spread between t and 2t so watches
  do not all reconnect together), and a client read timeout longer than the bookmark
  interval as a watchdog: a connection that went silent is dropped and reopened;
- 410 Gone (as the HTTP status or as an ``ERROR`` event in the stream) means the
  resourceVersion is too old: the informer lists again and ``diff_lists`` turns the
  difference between what it had and what it got into ADDED / MODIFIED / DELETED events, so
  no change made while the watch was broken is lost, except an object that came and went
  between the two lists: neither side has it, so ``on_listed`` (called after every list's
  diff, with whether it was the first) lets the owner check what it expected to be there;
- other failures reconnect after an exponential backoff with jitter (``backoff_delay``);
  so do watches that end within ``short_watch_seconds`` having delivered nothing (a proxy
  or apiserver closing them at once: client-go's reflector calls this a "very short
  watch"), and 410s that follow each other without any event between them (the first
  relists at once, the next ones wait), so there is never a hot reconnect or relist loop;
  only watch events (bookmarks included) count as delivered, not a bare ``Status`` line;
  a list answered 410 (its page token expired) is retried at once, then backing off;
- the loop runs under a ``Supervisor``: anything it does not expect (a bug, a health
  callback that raises) is logged and counted there, the watch is reported disconnected,
  and the loop starts again from the last resourceVersion after the supervisor's backoff
  (the watch options' base and cap); failing again and again makes ``/healthz`` fail.

``diff_lists`` and ``object_key`` are pure. ``Informer`` does I/O through its connection.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import urllib3

from dispatcher.clusters.connection import (
    ListResult,
    Resource,
    close_response,
    stream_lines,
)
from dispatcher.clusters.health import ClusterHealth
from dispatcher.clusters.pacing import backoff_delay
from dispatcher.errors import ApiError, ClusterUnavailable, DispatcherError, UnavailableCause
from dispatcher.metrics import WATCH_RESTARTS
from dispatcher.supervise import SupervisedThread, Supervisor, SupervisorPolicy

__all__ = [
    "ADDED",
    "DELETED",
    "MODIFIED",
    "EventHandler",
    "Informer",
    "WatchOptions",
    "WatchSource",
    "diff_lists",
    "object_key",
]

log = structlog.get_logger(__name__)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"

#: ``handler(event_type, obj, old)``: ``old`` is the previous state (``None`` when added);
#: for DELETED, ``obj`` is the object's last state.
EventHandler = Callable[[str, dict[str, Any], dict[str, Any] | None], None]


class WatchSource(Protocol):
    """What an informer needs from a connection (``Connection`` in production)."""

    cluster: str

    def list_objects(
        self,
        resource: Resource,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        gated: bool = True,
    ) -> ListResult: ...

    def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        timeout_seconds: int,
        idle_timeout: float,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """Timing of list+watch; the defaults suit production, tests shorten them."""

    #: Server-side watch duration; each watch asks for a random value in [t, 2t).
    timeout_seconds: int = 300
    #: Longest silence tolerated on an open watch. The API server sends a bookmark about
    #: every minute, so anything well above 60 s only fires on a dead connection.
    idle_timeout_seconds: float = 90.0
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    backoff_jitter: float = 0.5
    page_size: int = 500
    #: A watch that ends sooner than this without delivering anything counts as a failure.
    short_watch_seconds: float = 1.0


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    name = str(metadata.get("name", ""))
    return f"{namespace}/{name}" if namespace else name


def _version(obj: Mapping[str, Any]) -> tuple[Any, Any]:
    metadata = obj.get("metadata") or {}
    return metadata.get("uid"), metadata.get("resourceVersion")


def diff_lists(
    old: Mapping[str, dict[str, Any]], new: Mapping[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """The events that turn ``old`` into ``new`` (both keyed by ``object_key``).

    Deletions come first (they free capacity before additions take it), then additions and
    modifications in ``new``'s order. An object replaced under the same name (another uid)
    is a deletion and an addition; an unchanged resourceVersion is no event.
    """
    events: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    for key, before in old.items():
        after = new.get(key)
        if after is None or _version(after)[0] != _version(before)[0]:
            events.append((DELETED, before, before))
    for key, after in new.items():
        previous = old.get(key)
        if previous is None or _version(after)[0] != _version(previous)[0]:
            events.append((ADDED, after, None))
        elif _version(after)[1] != _version(previous)[1]:
            events.append((MODIFIED, after, previous))
    return events


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class Informer:
    """List+watch of one resource of one cluster, on its own daemon thread.

    ``name`` labels the thread, logs and metrics (``nodes``, ``pods-managed``...);
    ``health`` learns whether the watch is connected; ``supervisor`` runs the thread (a
    private one unless given, whose health nobody asks); ``draw`` feeds the backoff jitter
    and the timeout spread (``# fixed for tests``); ``on_listed(first)`` is called on the
    informer's thread after each list's events were handled; ``transform`` (like
    client-go's ``SetTransform``) turns each object as it arrives into what is kept and
    handed to the handler, e.g. a Secret into its names and key names, so that no value
    outlives the response it came in.
    """

    def __init__(
        self,
        source: WatchSource,
        resource: Resource,
        *,
        name: str,
        handler: EventHandler,
        label_selector: str | None = None,
        field_selector: str | None = None,
        options: WatchOptions | None = None,
        health: ClusterHealth | None = None,
        supervisor: Supervisor | None = None,
        draw: Callable[[], float] = random.random,
        on_listed: Callable[[bool], None] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.source = source
        self._transform = transform
        self.resource: Resource = resource
        self.name = name
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.options = options or WatchOptions()
        self._handler = handler
        self._on_listed = on_listed
        self._health = health
        self._supervisor = supervisor or Supervisor()
        self._draw = draw
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, Any]] = {}
        self._resource_version: str | None = None
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: SupervisedThread | None = None
        self._response: Any = None
        self._interrupted = False
        self._last_error: str | None = None

    @property
    def cluster(self) -> str:
        return self.source.cluster

    @property
    def synced(self) -> bool:
        """Whether the first list has been applied."""
        return self._synced.is_set()

    @property
    def last_error(self) -> str | None:
        """Why the last list or watch failed, until one succeeds (``None``: none failed)."""
        return self._last_error

    @property
    def resource_version(self) -> str | None:
        return self._resource_version

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def items(self) -> list[dict[str, Any]]:
        """The objects as last seen (shared dicts: do not modify them)."""
        with self._lock:
            return list(self._items.values())

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._items.get(key)

    # ----- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        policy = SupervisorPolicy(
            max_failures=self._supervisor.policy.max_failures,
            backoff_base_seconds=self.options.backoff_base_seconds,
            backoff_max_seconds=self.options.backoff_max_seconds,
            backoff_jitter=self.options.backoff_jitter,
        )
        self._thread = self._supervisor.spawn(
            f"kd-informer-{self.cluster}-{self.name}",
            self._supervised,
            stop=self._stop,
            policy=policy,
        )

    def stop(self) -> None:
        """Ask the thread to end and unblock it; see ``join``."""
        self._stop.set()
        self._drop_connection()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            return self._thread.join(timeout)
        return True

    def reconnect(self) -> None:
        """Drop the current watch; the informer reconnects from its resourceVersion."""
        self._interrupted = True
        self._drop_connection()

    def _drop_connection(self) -> None:
        response = self._response
        if response is not None:
            close_response(response)

    # ----- the loop --------------------------------------------------------------------
    def _supervised(self, thread: SupervisedThread) -> None:
        try:
            self._run(thread)
        except Exception:
            # Expected failures are handled in the loop; whatever else broke it, the watch
            # is gone. The supervisor logs, counts and restarts the loop.
            self._response = None
            WATCH_RESTARTS.labels(cluster=self.cluster, resource=self.name, reason="error").inc()
            self._health_call("watch_disconnected")
            raise

    def _run(self, thread: SupervisedThread) -> None:
        failures = 0
        expiries = 0  # 410s in a row, with no event delivered between them
        while not self._stop.is_set():
            reason = "closed"
            asked = 0.0  # a 429's Retry-After: back off at least that long
            try:
                if self._resource_version is None:
                    self._relist()
                    thread.ok()
                opened = time.monotonic()
                if self._watch():
                    failures = expiries = 0
                    thread.ok()
                elif (
                    self._interrupted
                    or time.monotonic() - opened >= self.options.short_watch_seconds
                ):
                    failures = 0  # a quiet watch that ran its course, or one we closed
                    thread.ok()
                else:
                    failures += 1
                    reason = "short"
                    log.warning(
                        "informer.short_watch",
                        cluster=self.cluster,
                        informer=self.name,
                        failures=failures,
                    )
            except _Expired:
                reason = "expired"
                expiries += 1
                self._resource_version = None
                log.info(
                    "informer.expired", cluster=self.cluster, informer=self.name, times=expiries
                )
            except (DispatcherError, OSError, urllib3.exceptions.HTTPError) as exc:
                if self._stop.is_set():
                    break
                failures += 1
                reason = "timeout" if _is_timeout(exc) else "error"
                if isinstance(exc, ApiError) and exc.retry_after:
                    asked = exc.retry_after
                self._disconnected(exc, failures)
            finally:
                self._response = None
            if self._stop.is_set():
                break
            if self._interrupted:
                self._interrupted = False
                reason = "closed"
            WATCH_RESTARTS.labels(cluster=self.cluster, resource=self.name, reason=reason).inc()
            if failures or expiries > 1:
                delay = backoff_delay(
                    max(failures, expiries - 1),
                    base=self.options.backoff_base_seconds,
                    cap=self.options.backoff_max_seconds,
                    jitter=self.options.backoff_jitter,
                    draw=self._draw(),
                )
                thread.wait(max(delay, asked))

    def _disconnected(self, exc: BaseException, failures: int) -> None:
        self._last_error = str(exc) if isinstance(exc, DispatcherError) else type(exc).__name__
        if self._health is not None:
            # The error says whose trouble it is: the API server's, or our credentials'.
            self._health.watch_disconnected(self.name, exc)
        # A refused credential is logged once per fetch by the provider; repeating it for
        # every informer retry would only bury it.
        refused = isinstance(exc, ClusterUnavailable) and exc.cause is UnavailableCause.REFUSED
        (log.debug if refused and failures > 1 else log.warning)(
            "informer.disconnected",
            cluster=self.cluster,
            informer=self.name,
            error=str(exc) if isinstance(exc, DispatcherError) else type(exc).__name__,
            failures=failures,
        )

    def _health_call(self, method: str) -> None:
        if self._health is not None:
            getattr(self._health, method)(self.name)

    def _relist(self) -> None:
        expired = 0
        while True:
            try:
                result = self.source.list_objects(
                    self.resource,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                    page_size=self.options.page_size,
                    gated=False,
                )
                break
            except ApiError as exc:
                # A page token expired during a long list: start over, at once the first
                # time, then backing off (never a hot loop of lists).
                if exc.status != 410 or self._stop.is_set():
                    raise
                expired += 1
                delay = backoff_delay(
                    expired - 1,
                    base=self.options.backoff_base_seconds,
                    cap=self.options.backoff_max_seconds,
                    jitter=self.options.backoff_jitter,
                    draw=self._draw(),
                )
                if self._stop.wait(delay):
                    raise
        transform = self._transform
        fresh = {
            object_key(obj): obj if transform is None else transform(obj) for obj in result.items
        }
        version = result.resource_version
        del result  # with ``transform``, nothing of the raw objects outlives the list
        with self._lock:
            old = self._items
            self._items = fresh
            self._resource_version = version
        self._deliver(diff_lists(old, fresh))
        # The list answered: the cluster is reachable, whatever the watch does next.
        self._last_error = None
        self._health_call("watch_connected")
        first = not self._synced.is_set()
        self._synced.set()
        log.info(
            "informer.listed",
            cluster=self.cluster,
            informer=self.name,
            objects=len(fresh),
            first=first,
        )
        if self._on_listed is not None:
            # After the diff: what the list lacks and the old items never had (an object
            # that came and went between watches) no diff can tell; the owner can ask.
            try:
                self._on_listed(first)
            except Exception:
                log.exception("informer.on_listed_failed", cluster=self.cluster, informer=self.name)

    def _watch(self) -> bool:
        """Watch until the stream ends; returns whether it delivered anything."""
        rv = self._resource_version or ""
        self._interrupted = False
        spread = self.options.timeout_seconds * (1.0 + self._draw())
        try:
            response = self.source.watch(
                self.resource,
                resource_version=rv,
                timeout_seconds=max(1, int(spread)),
                idle_timeout=self.options.idle_timeout_seconds,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
            )
        except ApiError as exc:
            if exc.status == 410:
                raise _Expired from exc
            raise
        self._response = response
        if self._stop.is_set():
            close_response(response)
            return False
        self._health_call("watch_connected")
        delivered = False
        try:
            lines = stream_lines(response, hold_nothing=self._transform is not None)
            for line in lines:
                if not line.strip():
                    continue
                applied = self._event(json.loads(line))
                del line  # with ``transform``: hold no raw event while waiting for the next
                if not applied:
                    continue  # not a watch event (a bare Status): delivers nothing
                delivered = True
                if self._health is not None:
                    self._health.watch_data(self.name)
        except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError) as exc:
            if self._interrupted or self._stop.is_set():
                # We closed the response (reconnect, stop): urllib3 then fails in whatever
                # way the closed socket makes it (AttributeError: its file is gone).
                return delivered
            if isinstance(exc, AttributeError):
                raise  # not a closed stream: a bug, the supervisor's to report
            if isinstance(exc, ValueError):
                raise ClusterUnavailable(
                    f"watch {self.name}: the stream held something other than JSON",
                    cluster=self.cluster,
                ) from exc
            raise ClusterUnavailable(
                f"watch {self.name}: {_stream_problem(exc)}", cluster=self.cluster
            ) from exc
        finally:
            close_response(response)
        return delivered

    def _event(self, event: Mapping[str, Any]) -> bool:
        """Apply one line of the stream; ``False`` if it was no watch event."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Expired
            raise ApiError(
                f"watch {self.name}: error event {obj.get('reason') or ''}".rstrip(),
                cluster=self.cluster,
                status=int(code or 500),
                reason=obj.get("reason"),
            )
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if version:
                self._resource_version = str(version)
            return True
        if kind not in (ADDED, MODIFIED, DELETED):
            return False
        if self._transform is not None:
            obj = self._transform(obj)
        key = object_key(obj)
        with self._lock:
            old = self._items.get(key)
            if kind == DELETED:
                self._items.pop(key, None)
            else:
                self._items[key] = obj
            if version:
                self._resource_version = str(version)
        self._deliver([(str(kind), obj, old)])
        return True

    def _deliver(self, events: Iterable[tuple[str, dict[str, Any], dict[str, Any] | None]]) -> None:
        for kind, obj, old in events:
            try:
                self._handler(kind, obj, old)
            except Exception:  # one bad event must not stop the others
                log.exception(
                    "informer.handler_failed",
                    cluster=self.cluster,
                    informer=self.name,
                    event_type=kind,
                    object=object_key(obj),
                )


def _is_timeout(exc: BaseException) -> bool:
    """Whether a read or connect timed out (not a refused connection)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, urllib3.exceptions.MaxRetryError) and seen.reason is not None:
            seen = seen.reason
        if isinstance(seen, urllib3.exceptions.NewConnectionError):
            return False
        if isinstance(seen, urllib3.exceptions.TimeoutError | TimeoutError):
            return True
        seen = seen.__cause__
    return False


def _stream_problem(exc: BaseException) -> str:
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return "no data within the idle timeout (connection presumed dead)"
    return "connection broken"
