"""Where job records live so that a restart (even ``kill -9``) loses nothing.

Running jobs can be rebuilt from their pods' labels and annotations, but a queued job has
no pod yet and a finished job's pod may be deleted by its cleanup policy; their records
are kept as one small ConfigMap per job in the state namespace of the in-plane cluster.
``MemoryStore`` is the test double for pure-logic tests.

I/O: ``ConfigMapStore`` talks to one Kubernetes API server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from dispatcher.core import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from dispatcher.errors import ApiError, ClusterUnavailable

T = TypeVar("T")

RECORD_KEY = "job.json"
_PREFIX = "kd-job-"


class JobStore(Protocol):
    def save(self, record: dict[str, Any]) -> None: ...
    def delete(self, job_id: str) -> None: ...
    def load_all(self) -> list[dict[str, Any]]: ...


class MemoryStore:
    """Records in a dict (tests; a single process that may lose its state)."""

    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._lock = threading.Lock()

    def save(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._records[record["id"]] = json.dumps(record)

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._records.pop(job_id, None)

    def load_all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(text) for text in self._records.values()]


Caller = Callable[[Callable[[ApiClient], Any]], Any]


class ConfigMapStore:
    """One ConfigMap per job (``kd-job-<id>``), labelled as ours, in ``namespace``.

    ``call`` runs a function with an authenticated ``ApiClient`` of the state cluster
    (the credential provider's ``call``, which refetches credentials once on a 401).
    """

    def __init__(self, call: Caller, namespace: str, cluster: str, timeout: float = 10.0) -> None:
        self._call = call
        self._namespace = namespace
        self._cluster = cluster
        self._timeout = timeout

    def _run(self, fn: Callable[[client.CoreV1Api], T]) -> T:
        try:
            result: T = self._call(lambda api: fn(client.CoreV1Api(api)))
        except ApiException as exc:
            raise ApiError(
                f"job store: {exc.reason}", cluster=self._cluster, status=exc.status or 0
            ) from exc
        except (OSError, ValueError) as exc:
            raise ClusterUnavailable(
                f"job store unreachable: {exc}", cluster=self._cluster
            ) from exc
        return result

    def save(self, record: dict[str, Any]) -> None:
        name = _PREFIX + record["id"]
        body: Any = {
            "metadata": {
                "name": name,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, "kube-dispatcher.dev/record": "job"},
            },
            "data": {RECORD_KEY: json.dumps(record, separators=(",", ":"))},
        }

        def write(core: client.CoreV1Api) -> None:
            try:
                core.replace_namespaced_config_map(
                    name, self._namespace, body, _request_timeout=self._timeout
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                core.create_namespaced_config_map(
                    self._namespace, body, _request_timeout=self._timeout
                )

        self._run(write)

    def delete(self, job_id: str) -> None:
        def remove(core: client.CoreV1Api) -> None:
            try:
                core.delete_namespaced_config_map(
                    _PREFIX + job_id, self._namespace, _request_timeout=self._timeout
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

        self._run(remove)

    def load_all(self) -> list[dict[str, Any]]:
        def read(core: client.CoreV1Api) -> list[dict[str, Any]]:
            response: Any = core.list_namespaced_config_map(
                self._namespace,
                label_selector="kube-dispatcher.dev/record=job",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            items = json.loads(response.data).get("items", [])
            records = []
            for item in items:
                text = (item.get("data") or {}).get(RECORD_KEY)
                if text:
                    records.append(json.loads(text))
            return records

        return self._run(read)
