"""Job records: one ``DispatchJob`` custom resource per job, written synchronously with
resourceVersion and fenced by the leader term, checked by the API server itself.

A record is a JSON dict: ``id``, ``spec`` (the task spec), ``idempotency_key``, ``tenant``,
``submitted_at`` and any other keys (state, message, attempt, history, conditions...). In
the cluster it is split in two, because the CRD has a status subresource:

    DispatchJob <id>   spec:   id, idempotencyKey, tenant, submittedAt, task (the record's
                               ``spec``),
                               fence (of the writer of the spec), envSecret
                       status: every other key of the record, and fence (of its writer)
    Secret <id>-env    the literal values of ``spec.env_vars`` (never in the DispatchJob)

so ``create`` is three writes (Secret when there are literal values, object, status) and
``update`` one (status; the spec too in the rare case it changed). Every write carries
resourceVersion (a conflict raises ``StaleRecord``: re-read, re-decide) and the writer's
``Fence``. The chart's ValidatingAdmissionPolicy (``files/fencing.yaml``) refuses a write
whose fence is not the holder and term of the namespace's Lease labelled ``FENCE_LABEL``
(no such Lease: leader election is off, everything is allowed), and a CRD transition rule
refuses a fence term lower than the one stored; both refusals raise ``Fenced``. Deleting
first writes the fence to the status, so a deposed leader cannot delete either.

Read back, a record is exactly the dict that was written (JSON numbers: an integral float
may come back as an int, equal in Python; ``submitted_at`` is always a float), with two
markers the writer never sets: ``env_missing: True`` when the Secret holding its literal env
values is gone (the values are absent), ``incomplete: True`` when the record has no status
(a create interrupted between its writes whose rollback failed too).

``MemoryRecords`` has the same semantics in memory, for simulation tests.

I/O: ``KubernetesRecords`` calls the state cluster's API server through its ``Connection``;
``MemoryRecords`` does none.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi

from dispatcher.clusters.connection import Connection
from dispatcher.core import JOB_ID_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from dispatcher.errors import ApiError, ClusterError, Fenced, StaleRecord, StoreError

__all__ = [
    "ENV_MISSING",
    "FENCE_LABEL",
    "GROUP",
    "INCOMPLETE",
    "KIND",
    "PLURAL",
    "VERSION",
    "Fence",
    "KubernetesRecords",
    "MemoryRecords",
    "RecordStore",
    "Stored",
    "env_secret_name",
]

GROUP = "kube-dispatcher.dev"
VERSION = "v1"
KIND = "DispatchJob"
PLURAL = "dispatchjobs"
#: The label (value ``"true"``) of the Lease whose holder and term the fencing policy checks.
FENCE_LABEL = "kube-dispatcher.dev/fence"
#: Set on a record read back without the Secret that held its literal env values.
ENV_MISSING = "env_missing"
#: Set on a record read back without a status (an interrupted create).
INCOMPLETE = "incomplete"

#: Labels Secrets of literal env values by what they are (``kube-dispatcher.dev/record: env``).
RECORD_LABEL = "kube-dispatcher.dev/record"
ENV_RECORD = "env"
ENV_KEY = "values.json"

_API_VERSION = f"{GROUP}/{VERSION}"
_JOB_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: Record keys kept in the object's spec, and their names there.
_SPEC_KEYS = {
    "id": "id",
    "spec": "task",
    "idempotency_key": "idempotencyKey",
    "tenant": "tenant",
}
_SUBMITTED_AT = "submitted_at"
_RESERVED = frozenset({"fence"})
_LIST_RESTARTS = 5
_DELETE_RACES = 3


@dataclass(frozen=True, slots=True)
class Fence:
    """Who writes: the Lease holder identity and the term it acquired the Lease in."""

    holder: str  # the Lease holder identity of the writer ("" when leader election is off)
    term: int  # the Lease's spec.leaseTransitions when that holder acquired it (0 when off)


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as read, and the version to pass to the next write."""

    record: dict[str, Any]  # exactly the dict that was written (round-trips)
    version: str  # metadata.resourceVersion


class RecordStore(Protocol):
    """Where job records live. Every write is synchronous and conditional.

    ``StaleRecord``: the record is not at the version given (or exists, for ``create``; or is
    absent, for ``update``). ``Fenced``: the writer's term is not the current one. Any other
    failure is a ``StoreError`` with the cause chained.
    """

    def create(self, record: dict[str, Any], fence: Fence) -> str: ...

    def update(self, record: dict[str, Any], version: str, fence: Fence) -> str: ...

    def get(self, job_id: str) -> Stored | None: ...

    def delete(self, job_id: str, fence: Fence, version: str | None = None) -> None: ...

    def list(self) -> list[Stored]: ...


def env_secret_name(job_id: str) -> str:
    """The Secret holding the literal env values of job ``job_id``."""
    return f"{job_id}-env"


# ----- records as JSON, checked the same way by both stores ------------------------------
def _checked(record: dict[str, Any]) -> str:
    """The record as canonical JSON, after the checks every store makes."""
    job_id = record.get("id")
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"record id {job_id!r}: must be an RFC 1123 label (it names the DispatchJob): "
            "lowercase letters, digits and '-', at most 63"
        )
    if not isinstance(record.get("spec"), dict):
        raise ValueError(f"record {job_id}: spec must be a JSON object")
    if _RESERVED & set(record):
        raise ValueError(f"record {job_id}: keys {sorted(_RESERVED & set(record))} are reserved")
    env = record["spec"].get("env_vars")
    if env is not None and not (isinstance(env, list) and all(isinstance(e, dict) for e in env)):
        raise ValueError(
            f"record {job_id}: spec.env_vars must be a list of objects (TaskSpec's form)"
        )
    try:
        return json.dumps(record, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"record {job_id}: not JSON: {exc}") from exc


# ----- the record <-> DispatchJob mapping (pure) -----------------------------------------
def _fence_json(fence: Fence) -> dict[str, Any]:
    return {"holder": fence.holder, "term": fence.term}


def _split_env(task: dict[str, Any]) -> tuple[dict[str, Any], list[str | None] | None]:
    """The task without literal env values, and the values by index (None: no literals)."""
    env = task.get("env_vars")
    if not env or not any(isinstance(e.get("value"), str) for e in env):
        return task, None
    values: list[str | None] = []
    redacted: list[dict[str, Any]] = []
    for entry in env:
        value = entry.get("value")
        if isinstance(value, str):
            values.append(value)
            redacted.append({k: v for k, v in entry.items() if k != "value"})
        else:
            values.append(None)
            redacted.append(entry)
    return {**task, "env_vars": redacted}, values


def _join_env(task: dict[str, Any], values: list[str | None]) -> dict[str, Any] | None:
    """The task with its literal env values back; None if they do not fit its env_vars."""
    env = task.get("env_vars")
    if not isinstance(env, list) or len(env) != len(values):
        return None
    joined = [
        entry if value is None else {**entry, "value": value}
        for entry, value in zip(env, values, strict=True)
    ]
    return {**task, "env_vars": joined}


def _spec_part(record: dict[str, Any]) -> dict[str, Any]:
    spec = {field: record[key] for key, field in _SPEC_KEYS.items() if key in record}
    if _SUBMITTED_AT in record:
        spec["submittedAt"] = record[_SUBMITTED_AT]
    return spec


def _status_part(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _SPEC_KEYS and k != _SUBMITTED_AT}


def _numbers(value: Any) -> Any:
    """``value`` with integral floats as ints: how the API server gives JSON numbers back."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _digest(value: Any) -> str:
    text = json.dumps(_numbers(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _record_of(obj: dict[str, Any], env: list[str | None] | None) -> dict[str, Any]:
    """The record a DispatchJob holds; ``env`` is its Secret's values (None: Secret gone)."""
    spec = obj.get("spec") or {}
    task = spec.get("task") or {}
    record: dict[str, Any] = {"id": spec.get("id")}
    missing = False
    if spec.get("envSecret"):
        joined = _join_env(task, env) if env is not None else None
        missing = joined is None
        task = task if joined is None else joined
    record["spec"] = task
    if "idempotencyKey" in spec:
        record["idempotency_key"] = spec["idempotencyKey"]
    if "tenant" in spec:
        record["tenant"] = spec["tenant"]
    if "submittedAt" in spec:
        at = spec["submittedAt"]
        record[_SUBMITTED_AT] = float(at) if isinstance(at, int) else at
    status = obj.get("status")
    if status is None:
        record[INCOMPLETE] = True
    else:
        record.update({k: v for k, v in status.items() if k not in _RESERVED})
    if missing:
        record[ENV_MISSING] = True
    return record


def _version_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


# ----- in memory ---------------------------------------------------------------------------
class MemoryRecords:
    """Records in a dict, with the Kubernetes store's semantics. Thread-safe.

    Versions are increasing integers. A write is ``Fenced`` when its term is lower than the
    record's stored term or than ``current_term`` (the tests' stand-in for the Lease; the
    holder is not compared). Checks run in the API server's order: existence and version
    (``StaleRecord``) first, then the term.
    """

    def __init__(self) -> None:
        self.current_term = 0
        self._lock = threading.Lock()
        self._records: dict[str, tuple[str, int, int]] = {}  # id -> (json, version, term)
        self._clock = 0

    def _next(self) -> int:
        self._clock += 1
        return self._clock

    def _check_term(self, job_id: str, fence: Fence, stored: int = 0) -> None:
        if fence.term < stored:
            raise Fenced(
                f"job record {job_id}: write of term {fence.term} refused, the record was "
                f"written in term {stored}",
                job_id=job_id,
            )
        if fence.term < self.current_term:
            raise Fenced(
                f"job record {job_id}: write of term {fence.term} refused, the current term "
                f"is {self.current_term}",
                job_id=job_id,
            )

    def create(self, record: dict[str, Any], fence: Fence) -> str:
        text = _checked(record)
        job_id = record["id"]
        with self._lock:
            self._check_term(job_id, fence)
            if job_id in self._records:
                raise StaleRecord(f"job record {job_id} exists already", job_id=job_id)
            version = self._next()
            self._records[job_id] = (text, version, fence.term)
            return str(version)

    def update(self, record: dict[str, Any], version: str, fence: Fence) -> str:
        text = _checked(record)
        job_id = record["id"]
        with self._lock:
            current = self._records.get(job_id)
            if current is None:
                raise StaleRecord(f"job record {job_id} does not exist", job_id=job_id)
            if str(current[1]) != version:
                raise StaleRecord(
                    f"job record {job_id} is at version {current[1]}, not {version}",
                    job_id=job_id,
                )
            self._check_term(job_id, fence, current[2])
            new = self._next()
            self._records[job_id] = (text, new, fence.term)
            return str(new)

    def get(self, job_id: str) -> Stored | None:
        with self._lock:
            current = self._records.get(job_id)
        if current is None:
            return None
        return Stored(json.loads(current[0]), str(current[1]))

    def delete(self, job_id: str, fence: Fence, version: str | None = None) -> None:
        with self._lock:
            current = self._records.get(job_id)
            if current is None:
                return
            if version is not None and str(current[1]) != version:
                raise StaleRecord(
                    f"job record {job_id} is at version {current[1]}, not {version}",
                    job_id=job_id,
                )
            self._check_term(job_id, fence, current[2])
            del self._records[job_id]

    def list(self) -> list[Stored]:
        with self._lock:
            items = sorted(self._records.items())
        return [Stored(json.loads(text), str(version)) for _, (text, version, _) in items]


# ----- in the cluster ----------------------------------------------------------------------
Call = Callable[[ApiClient, tuple[float, float]], Any]
# ``list`` is also a method name of the stores: aliases keep annotations unambiguous.
_Items = list[dict[str, Any]]


def _refusal(exc: ClusterError, job_id: str | None) -> StoreError:
    """Our error for a failed request: stale, fenced, or any other store failure."""
    text = f"job record {job_id}: {exc}" if job_id else f"job records: {exc}"
    if isinstance(exc, ApiError):
        message = str(exc)
        if exc.status == 409:
            return StaleRecord(text, job_id=job_id)
        # The fencing policy's refusal (403, with the policy's message) and the CRD's
        # transition rule on a fence term (422, naming the field).
        if exc.status == 403 and "ValidatingAdmissionPolicy" in message and "fence" in message:
            return Fenced(text, job_id=job_id)
        if exc.status == 422 and ".fence" in message:
            return Fenced(text, job_id=job_id)
    return StoreError(text, job_id=job_id)


def _env_values(secret: dict[str, Any]) -> list[str | None] | None:
    """The values a Secret of env values holds; None if it holds none we can read."""
    raw = (secret.get("data") or {}).get(ENV_KEY)
    if not isinstance(raw, str):
        return None
    try:
        values = json.loads(base64.b64decode(raw))
    except ValueError:
        return None
    if not isinstance(values, list) or not all(v is None or isinstance(v, str) for v in values):
        return None
    return values


class KubernetesRecords:
    """``DispatchJob`` objects (and Secrets of literal env values) in ``namespace``.

    ``connection`` is the state cluster's (every request paced, timed and counted there);
    ``page_size`` is the list page (``limit``). Thread-safe.
    """

    def __init__(self, connection: Connection, namespace: str, *, page_size: int = 500) -> None:
        self._connection = connection
        self._namespace = namespace
        self._page_size = page_size
        self._lock = threading.Lock()
        # Digest of each record's spec part (with env values) as last written or read: an
        # update rewrites the spec only when it differs.
        self._specs: dict[str, str] = {}

    # ----- requests ------------------------------------------------------------------------
    def _send(self, verb: str, what: str, call: Call, job_id: str | None) -> dict[str, Any] | None:
        """The response body, or None for a 404; other errors translated."""
        try:
            return self._connection.request(verb, f"{what} in {self._namespace}", call)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise _refusal(exc, job_id) from exc
        except ClusterError as exc:
            raise _refusal(exc, job_id) from exc

    def _objects(self, method: str, *args: Any, **kwargs: Any) -> Call:
        """A call of ``CustomObjectsApi.<method>(group, version, namespace, plural, *args)``."""
        namespace = self._namespace

        def call(client: ApiClient, timeout: tuple[float, float]) -> Any:
            return getattr(CustomObjectsApi(client), method)(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                *args,
                _preload_content=False,
                _request_timeout=timeout,
                **kwargs,
            )

        return call

    def _secrets(self, method: str, name: str | None = None, **kwargs: Any) -> Call:
        """A call of ``CoreV1Api.<method>([name,] namespace, **kwargs)``."""
        names = () if name is None else (name,)
        namespace = self._namespace

        def call(client: ApiClient, timeout: tuple[float, float]) -> Any:
            return getattr(CoreV1Api(client), method)(
                *names, namespace, _preload_content=False, _request_timeout=timeout, **kwargs
            )

        return call

    def _remember(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._specs[record["id"]] = _digest(_spec_part(record))

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._specs.pop(job_id, None)

    # ----- Secrets of literal env values ---------------------------------------------------
    def _secret_body(self, job_id: str, values: list[str | None]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": env_secret_name(job_id),
                "labels": {
                    MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                    RECORD_LABEL: ENV_RECORD,
                    JOB_ID_LABEL: job_id,
                },
            },
            "data": {ENV_KEY: base64.b64encode(json.dumps(values).encode()).decode()},
        }

    def _create_secret(self, job_id: str, values: list[str | None]) -> bool:
        """Create the Secret; False if one exists already (left untouched)."""
        body = self._secret_body(job_id, values)
        what = f"create secret {env_secret_name(job_id)}"
        try:
            self._connection.request(
                "create", what, self._secrets("create_namespaced_secret", body=body)
            )
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise _refusal(exc, job_id) from exc
        except ClusterError as exc:
            raise _refusal(exc, job_id) from exc
        return True

    def _replace_secret(self, job_id: str, values: list[str | None]) -> None:
        """Replace the job's Secret of env values, or create it."""
        name = env_secret_name(job_id)
        body = self._secret_body(job_id, values)
        call = self._secrets("replace_namespaced_secret", name, body=body)
        if self._send("update", f"replace secret {name}", call, job_id) is None:
            self._create_secret(job_id, values)

    def _delete_secret(self, job_id: str) -> None:
        name = env_secret_name(job_id)
        self._send(
            "delete",
            f"delete secret {name}",
            self._secrets("delete_namespaced_secret", name),
            job_id,
        )

    def _read_secret(self, job_id: str) -> list[str | None] | None:
        name = env_secret_name(job_id)
        call = self._secrets("read_namespaced_secret", name)
        body = self._send("get", f"read secret {name}", call, job_id)
        return None if body is None else _env_values(body)

    # ----- writes ----------------------------------------------------------------------------
    def _spec_body(
        self, record: dict[str, Any], fence: Fence
    ) -> tuple[dict[str, Any], list[str | None] | None]:
        """The object's spec for ``record`` and the literal env values kept out of it."""
        task, values = _split_env(record["spec"])
        spec = {**_spec_part(record), "task": task, "fence": _fence_json(fence)}
        if values is not None:
            spec["envSecret"] = env_secret_name(record["id"])
        return spec, values

    def _metadata(self, job_id: str, version: str | None = None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": job_id, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}}
        if version is not None:
            metadata["resourceVersion"] = version
        return metadata

    def create(self, record: dict[str, Any], fence: Fence) -> str:
        _checked(record)
        job_id: str = record["id"]
        spec, values = self._spec_body(record, fence)
        fresh = False
        if values is not None:
            fresh = self._create_secret(job_id, values)
            if not fresh:
                if self.get(job_id) is not None:
                    raise StaleRecord(f"job record {job_id} exists already", job_id=job_id)
                # A leftover of a create that failed before its record was written.
                self._replace_secret(job_id, values)
        body = {
            "apiVersion": _API_VERSION,
            "kind": KIND,
            "metadata": self._metadata(job_id),
            "spec": spec,
        }
        call = self._objects("create_namespaced_custom_object", body)
        try:
            created = self._send("create", f"create dispatchjob {job_id}", call, job_id)
            if created is None:
                raise StoreError(
                    f"job record {job_id}: the namespace {self._namespace} or the DispatchJob "
                    "CRD does not exist (install the chart's crds/)",
                    job_id=job_id,
                )
        except StaleRecord:
            if fresh:
                with contextlib.suppress(StoreError):
                    self._delete_secret(job_id)
            raise
        except StoreError:
            if values is not None:
                with contextlib.suppress(StoreError):
                    self._delete_secret(job_id)
            raise
        try:
            version = self._write_status(record, _version_of(created), fence)
        except StoreError:
            self._roll_back(job_id, _version_of(created), secret=values is not None)
            raise
        self._remember(record)
        return version

    def _roll_back(self, job_id: str, version: str, *, secret: bool) -> None:
        """Undo a create whose status write failed, unless that write landed after all."""
        body = {"preconditions": {"resourceVersion": version}}
        call = self._objects("delete_namespaced_custom_object", job_id, body=body)
        try:
            self._send("delete", f"roll back dispatchjob {job_id}", call, job_id)
            if secret:
                self._delete_secret(job_id)
        except StoreError:
            return  # changed since (the status landed after all) or unreachable: leave it

    def _write_status(self, record: dict[str, Any], version: str, fence: Fence) -> str:
        job_id: str = record["id"]
        body = {
            "apiVersion": _API_VERSION,
            "kind": KIND,
            "metadata": {"name": job_id, "resourceVersion": version},
            "status": {**_status_part(record), "fence": _fence_json(fence)},
        }
        call = self._objects("replace_namespaced_custom_object_status", job_id, body)
        written = self._send("update", f"update dispatchjob {job_id} status", call, job_id)
        if written is None:
            raise StaleRecord(f"job record {job_id} does not exist", job_id=job_id)
        return _version_of(written)

    def _write_spec(self, record: dict[str, Any], version: str, fence: Fence) -> str:
        job_id: str = record["id"]
        spec, values = self._spec_body(record, fence)
        if values is not None:
            self._replace_secret(job_id, values)
        body = {
            "apiVersion": _API_VERSION,
            "kind": KIND,
            "metadata": self._metadata(job_id, version),
            "spec": spec,
        }
        call = self._objects("replace_namespaced_custom_object", job_id, body)
        written = self._send("update", f"replace dispatchjob {job_id}", call, job_id)
        if written is None:
            raise StaleRecord(f"job record {job_id} does not exist", job_id=job_id)
        return _version_of(written)

    def update(self, record: dict[str, Any], version: str, fence: Fence) -> str:
        _checked(record)
        job_id: str = record["id"]
        with self._lock:
            known = self._specs.get(job_id)
        if known is None:
            stored = self.get(job_id)
            if stored is None:
                raise StaleRecord(f"job record {job_id} does not exist", job_id=job_id)
            known = _digest(_spec_part(stored.record))
        if known != _digest(_spec_part(record)):
            version = self._write_spec(record, version, fence)
        new = self._write_status(record, version, fence)
        self._remember(record)
        return new

    def delete(self, job_id: str, fence: Fence, version: str | None = None) -> None:
        for _ in range(_DELETE_RACES):
            if not self._fence_and_delete(job_id, fence, version):
                continue  # written between our two requests (no version given): again
            self._forget(job_id)
            self._delete_secret(job_id)
            return
        raise StaleRecord(f"job record {job_id} kept changing while being deleted", job_id=job_id)

    def _fence_and_delete(self, job_id: str, fence: Fence, version: str | None) -> bool:
        """Write the fence (so the API server judges this writer), then delete at that
        version. False if another write came in between and no version was given."""
        patch: dict[str, Any] = {"status": {"fence": _fence_json(fence)}}
        if version is not None:
            patch["metadata"] = {"resourceVersion": version}
        call = self._objects(
            "patch_namespaced_custom_object_status",
            job_id,
            patch,
            _content_type="application/merge-patch+json",
        )
        fenced = self._send("patch", f"fence dispatchjob {job_id}", call, job_id)
        if fenced is None:
            return True  # absent: nothing to delete but a leftover Secret
        body = {"preconditions": {"resourceVersion": _version_of(fenced)}}
        call = self._objects("delete_namespaced_custom_object", job_id, body=body)
        try:
            self._send("delete", f"delete dispatchjob {job_id}", call, job_id)
        except StaleRecord:
            if version is not None:
                raise
            return False
        return True

    # ----- reads -----------------------------------------------------------------------------
    def get(self, job_id: str) -> Stored | None:
        call = self._objects("get_namespaced_custom_object", job_id)
        obj = self._send("get", f"read dispatchjob {job_id}", call, job_id)
        if obj is None:
            return None
        env = self._read_secret(job_id) if (obj.get("spec") or {}).get("envSecret") else None
        record = _record_of(obj, env)
        self._remember(record)
        return Stored(record, _version_of(obj))

    def list(self) -> list[Stored]:
        objects = self._list_all(
            "list dispatchjobs",
            lambda token: self._objects(
                "list_namespaced_custom_object", limit=self._page_size, _continue=token
            ),
        )
        secrets = self._list_all(
            "list secrets",
            lambda token: self._secrets(
                "list_namespaced_secret",
                label_selector=f"{RECORD_LABEL}={ENV_RECORD}",
                limit=self._page_size,
                _continue=token,
            ),
        )
        env = {str((s.get("metadata") or {}).get("name", "")): _env_values(s) for s in secrets}
        stored = []
        for obj in objects:
            spec = obj.get("spec") or {}
            job_id = str(spec.get("id", ""))
            values = None
            if spec.get("envSecret"):
                name = env_secret_name(job_id)
                # Not listed: created after the Secrets were listed, or really gone.
                values = env[name] if name in env else self._read_secret(job_id)
            record = _record_of(obj, values)
            self._remember(record)
            stored.append(Stored(record, _version_of(obj)))
        return stored

    def _list_all(self, what: str, page: Callable[[str | None], Call]) -> _Items:
        """Every item, page by page; a page token that expired (410) starts the list over."""
        for _ in range(_LIST_RESTARTS):
            items: _Items = []
            token: str | None = None
            try:
                while True:
                    body = self._connection.request(
                        "list", f"{what} in {self._namespace}", page(token)
                    )
                    items.extend(body.get("items") or [])
                    token = (body.get("metadata") or {}).get("continue") or None
                    if token is None:
                        return items
            except ApiError as exc:
                if exc.status != 410:
                    raise _refusal(exc, None) from exc
            except ClusterError as exc:
                raise _refusal(exc, None) from exc
        raise StoreError(
            f"{what} in {self._namespace}: the list expired {_LIST_RESTARTS} times in a row"
        )
