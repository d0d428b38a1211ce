"""The campaign's history: what an outside observer saw, written as JSON lines.

A history is a folder of four files, written while the campaign runs and read afterwards by
``checker.py`` (and by nothing else):

- ``meta.json``: the seed, the namespace, each cluster's nodes (GPUs, model), the failover
  bound, the unreachable policy the dispatchers run with, the planned fault schedule;
- ``pods.jsonl``: every ADDED/MODIFIED/DELETED of a dispatcher-labelled pod in the campaign's
  namespace on every cluster, seen by an admin watch (``PodWatch``) that is not the
  dispatcher's code; its own outages (``WATCH_GAP`` ... ``WATCH_RESUMED``), and after each
  outage the difference between the fresh list and what was alive before, as events with
  ``synthetic: true``; ``WATCH_STOPPED`` at the end;
- ``client.jsonl``: every task the client chose (``type: task``), every HTTP request it made
  and its answer (``type: request``: op, key, job id, status, state, start and answer time),
  and where it stopped waiting (``type: gave_up``);
- ``faults.jsonl``: each fault injected, ``phase: start`` and ``phase: end``.

Every record carries ``t`` (wall clock, seconds since the epoch) and ``mono``
(``time.monotonic()``, one clock for every process of the machine, used for all ordering).

The folder's layout and writers are in ``records.py``; this module holds the observer.

I/O: ``PodWatch`` lists and watches pods over HTTPS (httpx) and writes what it saw.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from benchmarks.fault_campaign.records import JsonLines
from dispatcher.core.podspec import (
    ATTEMPT_LABEL,
    IDEMPOTENCY_KEY_ANNOTATION,
    JOB_ID_LABEL,
    managed_pods_selector,
)

__all__ = ["PodWatch", "pod_record"]

#: Fields whose change makes a synthetic MODIFIED after a gap.
_COMPARED = ("phase", "node", "deletion_timestamp", "resource_version")


def _gpus(spec: Mapping[str, Any]) -> int:
    total = 0
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get("nvidia.com/gpu") or (
            resources.get("requests") or {}
        ).get("nvidia.com/gpu")
        if amount is not None:
            total += int(str(amount))
    return total


def pod_record(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the history keeps of one pod object (as the API returns it)."""
    metadata = obj.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    spec = obj.get("spec") or {}
    attempt = labels.get(ATTEMPT_LABEL)
    return {
        "pod": metadata.get("name"),
        "uid": metadata.get("uid"),
        "namespace": metadata.get("namespace"),
        "job_id": labels.get(JOB_ID_LABEL),
        "attempt": int(attempt) if isinstance(attempt, str) and attempt.isdigit() else attempt,
        "key": annotations.get(IDEMPOTENCY_KEY_ANNOTATION),
        "phase": (obj.get("status") or {}).get("phase"),
        "node": spec.get("nodeName"),
        "deletion_timestamp": metadata.get("deletionTimestamp"),
        "created_at": metadata.get("creationTimestamp"),
        "resource_version": metadata.get("resourceVersion"),
        "gpus": _gpus(spec),
    }


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class PodWatch:
    """An admin list+watch of the campaign's pods on one cluster, written to ``out``.

    ``start()`` returns once the first list is written. On any error (the apiserver stopped,
    a 410, a broken stream) it records ``WATCH_GAP`` with ``since`` (the last moment it was
    sure to have seen everything), retries, and on the next successful list writes the
    difference from what it believed alive as synthetic events, then ``WATCH_RESUMED``.
    ``stop()`` ends the watch, lists once more (synthetic differences again) and writes
    ``WATCH_STOPPED`` with the pods still alive.
    """

    def __init__(  # noqa: PLR0917 - one watch needs all of these
        self,
        cluster: str,
        server: str,
        token: str,
        ca_file: str,
        namespace: str,
        out: JsonLines,
        watch_seconds: int = 10,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self._out = out
        self._watch_seconds = watch_seconds
        self._http = httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca_file),
            timeout=httpx.Timeout(watch_seconds + 15.0, connect=3.0),
        )
        self._path = f"/api/v1/namespaces/{namespace}/pods"
        self._alive: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listed = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{cluster}", daemon=True)
        self._last_seen = time.monotonic()
        self._gap_since: float | None = None

    # ----- public ---------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._listed.wait(timeout):
            raise RuntimeError(f"the pod watch on {self.cluster} could not list in {timeout}s")

    def request_stop(self) -> None:
        """Ask the watch to end (it does within ``watch_seconds``); ``stop()`` waits for it."""
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()

    def stop(self, timeout: float = 30.0) -> None:
        self.request_stop()
        self._thread.join(timeout)
        complete = True
        try:
            self._relist()
        except (httpx.HTTPError, httpx.StreamError, _Gone, ValueError) as exc:
            complete = False
            self._event("WATCH_GAP", since=self._last_seen, reason=_why(exc))
        with self._lock:
            alive = sorted(self._alive)
        self._event("WATCH_STOPPED", alive=alive, complete=complete)
        self._http.close()

    def alive(self) -> list[dict[str, Any]]:
        """The pods this watch believes alive now (records as written)."""
        with self._lock:
            return [dict(record) for record in self._alive.values()]

    # ----- the loop -------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                    self._listed.set()
                resource_version = self._watch(resource_version)
                delay = 0.5
            except Exception as exc:  # an observer must outlive any error: it records a gap
                if self._stop.is_set():
                    break
                resource_version = None
                if self._gap_since is None:
                    self._gap_since = self._last_seen
                    self._event("WATCH_GAP", since=self._gap_since, reason=_why(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)

    def _relist(self) -> str:
        response = self._http.get(self._path, params={"labelSelector": managed_pods_selector()})
        response.raise_for_status()
        body = response.json()
        now = time.monotonic()
        current = {}
        for item in body.get("items") or []:
            record = pod_record(item)
            current[record["uid"]] = record
        with self._lock:
            before = dict(self._alive)
            self._alive = current
        for uid, record in before.items():
            if uid not in current:
                self._pod("DELETED", record, synthetic=True)
        for uid, record in current.items():
            if uid not in before:
                self._pod("ADDED", record, synthetic=True)
            elif any(record[k] != before[uid][k] for k in _COMPARED):
                self._pod("MODIFIED", record, synthetic=True)
        self._last_seen = now
        if self._gap_since is not None:
            self._event("WATCH_RESUMED", since=self._gap_since, gap_seconds=now - self._gap_since)
            self._gap_since = None
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> str:
        params = {
            "labelSelector": managed_pods_selector(),
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._watch_seconds),
        }
        with self._http.stream("GET", self._path, params=params) as response:
            self._response = response
            if response.status_code == 410:
                raise _Gone("410 Gone on watch")
            response.raise_for_status()
            self._last_seen = time.monotonic()
            for line in _lines(response):
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    raise _Gone(f"watch ERROR {obj.get('code')}: {obj.get('message')}")
                resource_version = str(
                    (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                )
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    record = pod_record(obj)
                    with self._lock:
                        if kind == "DELETED":
                            self._alive.pop(record["uid"], None)
                        else:
                            self._alive[record["uid"]] = record
                    self._pod(kind, record, synthetic=False)
                self._last_seen = time.monotonic()
                if self._stop.is_set():
                    break
        self._response = None
        return resource_version

    # ----- records --------------------------------------------------------------------
    def _pod(self, kind: str, record: Mapping[str, Any], *, synthetic: bool) -> None:
        self._out.write({**record, "cluster": self.cluster, "event": kind, "synthetic": synthetic})

    def _event(self, kind: str, **fields: Any) -> None:
        self._out.write({"cluster": self.cluster, "event": kind, **fields})


def _lines(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.strip():
            yield line


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
