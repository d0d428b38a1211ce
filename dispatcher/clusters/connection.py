"""One connection per cluster: the Kubernetes API calls the dispatcher makes, paced and timed.

Every request

- waits for a token of the cluster's rate limiter (``client.qps``/``client.burst``);
- carries ``_request_timeout=(connect, read)``, so no socket ever waits forever (watches use
  their own, longer read timeout as an idle watchdog);
- is counted in ``dispatcher_kube_api_requests_total{cluster, verb, code}``;
- is refused at once with ``ClusterUnavailable`` (cause ``BREAKER``) while the cluster's
  circuit breaker is open (informers are exempt: their reconnects are the probes);
- on 401 asks the ``ClientProvider`` to invalidate the client and retries once with a new one;
- tells the cluster's health what its outcome says about the API server
  (``dispatcher.core.apierrors.health_signal``): transport errors and 5xx count against it;
  a 429 is an answer (``ApiError`` kind ``THROTTLED`` with ``retry_after``); a
  ``CredentialError`` from the provider (Vault unavailable, a kubeconfig rejected) becomes
  ``ClusterUnavailable`` with cause ``CREDENTIALS`` and never counts against the cluster;
  a ``KubeconfigRejected`` (from the provider, or raised by the client at connect time for
  an address our rules refuse) becomes cause ``REFUSED`` with its ``RefusalReason``.

Responses stay raw JSON dicts (``_preload_content=False`` then ``json.loads``): cheaper than
the client's model classes, and what ``dispatcher.core`` reads. Library errors are
translated into ``ClusterUnavailable`` (no answer) and ``ApiError`` (an error status, built
by ``dispatcher.core.apierrors.api_error``: its kind, Retry-After, and the API server's
message with every echoed request value cut out), with the original chained.

I/O: HTTP to one cluster's API server through the provider's ``ApiClient``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import structlog
import urllib3
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from dispatcher.clusters.health import ClusterHealth
from dispatcher.clusters.pacing import TokenBucket
from dispatcher.core.apierrors import api_error
from dispatcher.errors import (
    ApiError,
    ClusterUnavailable,
    CredentialError,
    KubeconfigRejected,
    UnavailableCause,
)
from dispatcher.metrics import KUBE_API_REQUESTS
from dispatcher.settings import ClientSettings

__all__ = [
    "ClientProvider",
    "Connection",
    "CopyResource",
    "ListResult",
    "LogLines",
    "NamespacedResource",
    "Resource",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class NamespacedResource:
    """A core (``v1``) resource in one namespace, e.g. ``secrets`` in ``batch``.

    ``metadata_only`` asks the API server for ``PartialObjectMetadata`` (names, labels,
    resourceVersion; no spec, status or data), so no value of the objects is sent at all.
    """

    plural: Literal["secrets", "configmaps", "persistentvolumeclaims", "serviceaccounts"]
    namespace: str
    metadata_only: bool = False

    def __str__(self) -> str:
        return f"{self.plural} in {self.namespace}"

    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/{self.plural}"

    def accept(self, *, watch: bool) -> str:
        if not self.metadata_only:
            return "application/json"
        kind = "PartialObjectMetadata" if watch else "PartialObjectMetadataList"
        # The server falls back to the full object only if it cannot convert, never silently
        # for core resources; the second type keeps old servers answering.
        return f"application/json;as={kind};g=meta.k8s.io;v=v1, application/json"


Resource = Literal["pods", "nodes"] | NamespacedResource
#: What the dispatcher materialises in a cluster (``read_object``, ``create_object``...).
CopyResource = Literal["secrets", "configmaps"]
_COPY_KINDS: dict[str, str] = {"secrets": "secret", "configmaps": "config_map"}
T = TypeVar("T")

_CHUNK = 64 * 1024


class ClientProvider(Protocol):
    """Where ``ApiClient``\\ s come from (``dispatcher.credentials`` in the service).

    ``api_client`` may return the same client many times; after ``invalidate(cluster,
    client)`` (the API server said 401 to that client) it must return a fresh one.
    """

    def api_client(self, cluster: str) -> ApiClient: ...

    def invalidate(self, cluster: str, client: ApiClient) -> None: ...


@dataclass(frozen=True, slots=True)
class ListResult:
    """Every object of a (paginated) list and the resourceVersion to watch from."""

    items: list[dict[str, Any]]
    resource_version: str


def _header(exc: ApiException, name: str) -> str | None:
    headers = getattr(exc, "headers", None)
    if headers is None:
        return None
    value = headers.get(name)
    return value if isinstance(value, str) else None


def _status_body(raw: bytes | str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _transport_problem(exc: BaseException) -> str:
    """What went wrong on the wire, in words that carry no URL query or credential."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError subclasses ConnectTimeoutError: test it first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
        return "connection refused or unreachable"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return "read timed out"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection broken"
    return type(exc).__name__


class Connection:
    """Requests to one cluster. Thread-safe; share one per cluster.

    ``health`` (optional) is told about every outcome and gates requests while its breaker
    is open; ``clock`` and ``sleep`` pace the rate limiter (``# fakes for tests``).
    """

    def __init__(
        self,
        cluster: str,
        provider: ClientProvider,
        client: ClientSettings | None = None,
        *,
        health: ClusterHealth | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.cluster = cluster
        self.settings = client or ClientSettings()
        self._provider = provider
        self._health = health
        self._clock = clock
        self._limiter = TokenBucket(
            self.settings.qps, self.settings.burst, clock=clock, sleep=sleep
        )

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` seconds for ordinary requests."""
        return (self.settings.connect_timeout_seconds, self.settings.read_timeout_seconds)

    # ----- the one way requests go out -------------------------------------------------
    def _send(
        self,
        verb: str,
        what: str,
        call: Callable[[Any, tuple[float, float]], Any],
        consume: Callable[[Any], T],
        *,
        gated: bool = True,
        read_timeout: float | None = None,
        api: Callable[[ApiClient], Any] = CoreV1Api,
    ) -> T:
        """Send ``call`` and ``consume`` its raw response; both inside the error handling.

        ``call`` gets ``api(client)`` (a ``CoreV1Api`` unless told otherwise) and the timeout.

        ``consume`` returns what the caller gets; for streams it hands the open response
        over (and the caller must close it).
        """
        if gated and self._health is not None and not self._health.allow_request():
            wait = self._health.retry_in()
            raise ClusterUnavailable(
                f"{what}: refused, the cluster is marked down after repeated failures "
                f"(next probe in {wait:.0f}s)",
                cluster=self.cluster,
                cause=UnavailableCause.BREAKER,
            )
        self._limiter.acquire()
        timeout = (self.settings.connect_timeout_seconds, read_timeout or self.timeout[1])
        for attempt in (1, 2):
            client = self._client(what)
            started = self._clock()
            try:
                response = call(api(client), timeout)
                result = consume(response)
            except ApiException as exc:
                status = int(exc.status or 0)
                if status == 0:
                    # The client reports TLS failures as status 0.
                    self._count(verb, "error")
                    raise self._unanswered(
                        ClusterUnavailable(
                            f"{what}: TLS or request setup failed", cluster=self.cluster
                        )
                    ) from exc
                self._count(verb, str(status))
                if status == 401 and attempt == 1:
                    log.info("cluster.unauthorized_retry", cluster=self.cluster, verb=verb)
                    self._provider.invalidate(self.cluster, client)
                    continue
                error = api_error(
                    self.cluster,
                    what,
                    status,
                    _status_body(exc.body),
                    retry_after_header=_header(exc, "Retry-After"),
                )
                if self._health is not None:
                    self._health.request_failed(error, self._clock() - started)
                raise error from exc
            except KubeconfigRejected as exc:
                # Raised at connect time (the address), before anything was sent.
                self._count(verb, "refused")
                raise self._refused(exc) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._count(verb, "error")
                raise self._unanswered(
                    ClusterUnavailable(f"{what}: {_transport_problem(exc)}", cluster=self.cluster)
                ) from exc
            self._count(verb, str(getattr(response, "status", 200)))
            if self._health is not None:
                self._health.succeeded(self._clock() - started)
            return result
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _client(self, what: str) -> ApiClient:
        """The provider's current client; a credential failure is not the cluster's."""
        try:
            return self._provider.api_client(self.cluster)
        except KubeconfigRejected as exc:
            raise self._refused(exc) from exc
        except CredentialError as exc:
            words = str(exc).removeprefix(f"{self.cluster}: ")
            raise self._unanswered(
                ClusterUnavailable(
                    f"{what}: credentials unavailable: {words}",
                    cluster=self.cluster,
                    cause=UnavailableCause.CREDENTIALS,
                )
            ) from exc

    def _refused(self, exc: KubeconfigRejected) -> ClusterUnavailable:
        # Without the request's words: the refusal is the cluster's, whichever request met it.
        words = str(exc).removeprefix(f"{self.cluster}: ")
        return self._unanswered(
            ClusterUnavailable(
                f"refused: {exc.refusal.value}: {words}",
                cluster=self.cluster,
                cause=UnavailableCause.REFUSED,
                refusal=exc.refusal,
            )
        )

    def _unanswered(self, error: ClusterUnavailable) -> ClusterUnavailable:
        if self._health is not None:
            self._health.request_failed(error)
        return error

    def _count(self, verb: str, code: str) -> None:
        KUBE_API_REQUESTS.labels(cluster=self.cluster, verb=verb, code=code).inc()

    # ----- pods --------------------------------------------------------------------------
    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create a pod from a manifest; returns the created pod. 409 if the name exists."""
        name = (manifest.get("metadata") or {}).get("name", "")
        return self._send(
            "create",
            f"create pod {namespace}/{name}",
            lambda api, timeout: api.create_namespaced_pod(
                namespace, dict(manifest), _preload_content=False, _request_timeout=timeout
            ),
            _read_json,
        )

    def delete_pod(
        self, namespace: str, name: str, grace_period_seconds: int | None = None
    ) -> None:
        """Delete a pod; a pod already gone is not an error."""
        try:
            self._send(
                "delete",
                f"delete pod {namespace}/{name}",
                lambda api, timeout: api.delete_namespaced_pod(
                    name,
                    namespace,
                    grace_period_seconds=grace_period_seconds,
                    propagation_policy="Background",
                    _preload_content=False,
                    _request_timeout=timeout,
                ),
                _discard,
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod, or ``None`` when it does not exist."""
        try:
            return self._send(
                "get",
                f"read pod {namespace}/{name}",
                lambda api, timeout: api.read_namespaced_pod(
                    name, namespace, _preload_content=False, _request_timeout=timeout
                ),
                _read_json,
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    # ----- Secrets and ConfigMaps (dependency copies) --------------------------------------
    def read_object(self, plural: CopyResource, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret or ConfigMap, or ``None`` when it does not exist."""
        kind = _COPY_KINDS[plural]
        try:
            return self._send(
                "get",
                f"read {kind.replace('_', '')} {namespace}/{name}",
                lambda api, timeout: getattr(api, f"read_namespaced_{kind}")(
                    name, namespace, _preload_content=False, _request_timeout=timeout
                ),
                _read_json,
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_namespaced(
        self, plural: CopyResource, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]:
        """The Secrets or ConfigMaps of ``namespace`` matching the selector, whole."""
        return self.list_objects(
            NamespacedResource(plural, namespace), label_selector=label_selector
        ).items

    def create_object(
        self, plural: CopyResource, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Create a Secret or ConfigMap; 409 if the name exists."""
        kind = _COPY_KINDS[plural]
        name = (body.get("metadata") or {}).get("name", "")
        return self._send(
            "create",
            f"create {kind.replace('_', '')} {namespace}/{name}",
            lambda api, timeout: getattr(api, f"create_namespaced_{kind}")(
                namespace, dict(body), _preload_content=False, _request_timeout=timeout
            ),
            _read_json,
        )

    def replace_object(
        self, plural: CopyResource, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Replace a Secret or ConfigMap; 409 if its ``resourceVersion`` is not current."""
        kind = _COPY_KINDS[plural]
        name = (body.get("metadata") or {}).get("name", "")
        return self._send(
            "update",
            f"update {kind.replace('_', '')} {namespace}/{name}",
            lambda api, timeout: getattr(api, f"replace_namespaced_{kind}")(
                name, namespace, dict(body), _preload_content=False, _request_timeout=timeout
            ),
            _read_json,
        )

    def delete_object(
        self,
        plural: CopyResource,
        namespace: str,
        name: str,
        resource_version: str | None = None,
    ) -> bool:
        """Delete a Secret or ConfigMap (only at ``resource_version`` if given: 409
        otherwise); ``False`` when it was already gone."""
        kind = _COPY_KINDS[plural]
        body = {"preconditions": {"resourceVersion": resource_version}} if resource_version else {}
        try:
            self._send(
                "delete",
                f"delete {kind.replace('_', '')} {namespace}/{name}",
                lambda api, timeout: getattr(api, f"delete_namespaced_{kind}")(
                    name, namespace, body=body, _preload_content=False, _request_timeout=timeout
                ),
                _discard,
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def pod_logs(  # noqa: PLR0917 - positional like the dispatcher's Connection protocol
        self,
        namespace: str,
        name: str,
        container: str | None = None,
        follow: bool = False,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> LogLines:
        """The container's log lines (without newlines), streamed as they are read.

        The request is sent now, so a missing pod raises here. With ``follow`` the stream
        lasts until the container ends; ``idle_timeout`` (default: the read timeout, at
        least 5 minutes when following) bounds the silence between two chunks, after which
        iteration raises ``ClusterUnavailable``. ``close()`` closes the stream, also from
        another thread than the one reading it.
        """
        what = f"logs of pod {namespace}/{name}"
        if idle_timeout is None:
            idle_timeout = self.timeout[1] if not follow else max(self.timeout[1], 300.0)
        response = self._send(
            "logs",
            what,
            lambda api, timeout: api.read_namespaced_pod_log(
                name,
                namespace,
                container=container,
                follow=follow,
                since_seconds=since_seconds,
                tail_lines=tail_lines,
                _preload_content=False,
                _request_timeout=timeout,
            ),
            _keep_open,
            read_timeout=idle_timeout,
        )
        return LogLines(self._lines(response, what), response)

    def _lines(self, response: Any, what: str) -> Iterator[str]:
        try:
            for line in stream_lines(response):
                yield line.decode("utf-8", errors="replace")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailable(
                f"{what}: {_transport_problem(exc)}", cluster=self.cluster
            ) from exc
        finally:
            close_response(response)

    def list_pods(
        self, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Pods of all namespaces matching the selectors, as raw dicts."""
        return self.list_objects(
            "pods", label_selector=label_selector, field_selector=field_selector
        ).items

    def list_nodes(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.list_objects("nodes", label_selector=label_selector).items

    # ----- any other API (job records, the Lease) ------------------------------------------
    def request(
        self,
        verb: str,
        what: str,
        call: Callable[[ApiClient, tuple[float, float]], Any],
        *,
        gated: bool = True,
    ) -> dict[str, Any]:
        """Send any API call through this connection's pacing, timeouts, 401 retry, metrics
        and error translation; returns the JSON body.

        ``call(api_client, timeout)`` builds its own API class (``CustomObjectsApi``,
        ``CoordinationV1Api``...) and must pass ``_preload_content=False`` and
        ``_request_timeout=timeout``.
        """
        return self._send(verb, what, call, _read_json, gated=gated, api=_raw_client)

    # ----- list and watch (informers) ------------------------------------------------------
    def list_objects(
        self,
        resource: Resource,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        gated: bool = True,
    ) -> ListResult:
        """Every matching object, page by page, and the list's resourceVersion.

        A page token that expired mid-list raises ``ApiError`` 410; list again.
        """
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            send: Callable[[Any, tuple[float, float]], Any]
            if isinstance(resource, NamespacedResource):
                send = _namespaced_call(
                    resource,
                    watch=False,
                    label_selector=label_selector,
                    field_selector=field_selector,
                    limit=page_size,
                    _continue=token,
                )
            else:

                def send(api: Any, timeout: tuple[float, float], token: str | None = token) -> Any:
                    return _lister(api, resource)(
                        label_selector=label_selector,
                        field_selector=field_selector,
                        limit=page_size,
                        _continue=token,
                        _preload_content=False,
                        _request_timeout=timeout,
                    )

            page = self._send(
                "list",
                f"list {resource}",
                send,
                _read_json,
                gated=gated,
                api=_raw_client if isinstance(resource, NamespacedResource) else CoreV1Api,
            )
            items.extend(page.get("items") or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                return ListResult(items, str(metadata.get("resourceVersion", "")))

    def watch(
        self,
        resource: Resource,
        *,
        resource_version: str,
        timeout_seconds: int,
        idle_timeout: float,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Any:
        """Open a watch from ``resource_version`` (with bookmarks); returns the raw response.

        The server ends it after ``timeout_seconds``; a read that waits longer than
        ``idle_timeout`` raises (a silent dead connection). Read it with ``stream_lines`` and
        close it with ``close_response``. Never refused by the breaker: informers' reconnects
        are how a cluster marked down is found up again.
        """
        if isinstance(resource, NamespacedResource):
            return self._send(
                "watch",
                f"watch {resource}",
                _namespaced_call(
                    resource,
                    watch=True,
                    allow_watch_bookmarks=True,
                    resource_version=resource_version,
                    timeout_seconds=timeout_seconds,
                    label_selector=label_selector,
                    field_selector=field_selector,
                ),
                _keep_open,
                gated=False,
                read_timeout=idle_timeout,
                api=_raw_client,
            )
        return self._send(
            "watch",
            f"watch {resource}",
            lambda api, timeout: _lister(api, resource)(
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,
                label_selector=label_selector,
                field_selector=field_selector,
                _preload_content=False,
                _request_timeout=timeout,
            ),
            _keep_open,
            gated=False,
            read_timeout=idle_timeout,
        )


def _raw_client(client: ApiClient) -> ApiClient:
    return client


_QUERY_NAMES = {
    "watch": "watch",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "resource_version": "resourceVersion",
    "timeout_seconds": "timeoutSeconds",
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
    "limit": "limit",
    "_continue": "continue",
}


def _namespaced_call(
    resource: NamespacedResource, *, watch: bool, **query: Any
) -> Callable[[Any, tuple[float, float]], Any]:
    """A list or watch of ``resource`` through the raw ``ApiClient``: the generated
    methods overwrite the ``Accept`` header, which ``PartialObjectMetadata`` needs."""
    params = [
        (_QUERY_NAMES[name], str(value).lower() if isinstance(value, bool) else value)
        for name, value in query.items()
        if value is not None
    ]
    if watch:
        params.insert(0, ("watch", "true"))

    def call(client: ApiClient, timeout: tuple[float, float]) -> Any:
        headers = {"Accept": resource.accept(watch=watch)}
        response = _raw_get(client, resource.path(), params, headers, timeout)
        # The client keeps the last response (``last_response``), whose body a list of
        # Secrets fills with their values: only the caller, who reduces it, may hold it.
        setattr(client, "last_response", None)  # noqa: B010 - not every generation has it
        return response

    return call


def _raw_get(
    client: ApiClient,
    path: str,
    params: list[tuple[str, Any]],
    headers: dict[str, str],
    timeout: tuple[float, float],
) -> Any:
    """GET ``path`` with our own headers, unread (the urllib3 response), in either client
    generation; a non-2xx answer raises ``ApiException`` as the generated methods do.

    37.x builds the request with ``param_serialize`` and sends it with ``call_api(method,
    url, ...)``, which returns a ``RESTResponse`` without judging its status; up to 36.x
    ``call_api(path, method, ...)`` takes the parameters itself and raises on an error.
    """
    serialize = getattr(client, "param_serialize", None)
    if serialize is None:  # up to 36.x
        return getattr(client, "call_api")(  # noqa: B009 - its signature is 36.x's here
            path,
            "GET",
            query_params=params,
            header_params=headers,
            auth_settings=["BearerToken"],
            response_types_map={},
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=timeout,
        )
    request = serialize(
        "GET", path, query_params=params, header_params=headers, auth_settings=["BearerToken"]
    )
    response = getattr(client, "call_api")(*request, _request_timeout=timeout)  # noqa: B009
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)  # type: ignore[attr-defined,unused-ignore]
    return response.response


def _lister(api: Any, resource: Resource) -> Callable[..., Any]:
    if isinstance(resource, NamespacedResource):
        raise TypeError(f"{resource} is listed through _namespaced_call")
    if resource == "pods":
        return api.list_pod_for_all_namespaces  # type: ignore[no-any-return]
    return api.list_node  # type: ignore[no-any-return]


def _read_json(response: Any) -> dict[str, Any]:
    try:
        data = json.loads(response.data)
    except ValueError as exc:
        raise urllib3.exceptions.ProtocolError(
            "the API server answered something not JSON"
        ) from exc
    finally:
        response.release_conn()
    if not isinstance(data, dict):
        raise urllib3.exceptions.ProtocolError("the API server answered something not JSON")
    return data


def _discard(response: Any) -> None:
    try:
        response.drain_conn()
    finally:
        response.release_conn()


class LogLines(Iterator[str]):
    """A log being streamed: its lines, and ``close()``, which any thread may call: a read
    blocked in another thread then ends at once (the iteration stops or raises), so a
    follower whose client went away gives its thread back without waiting for a line."""

    def __init__(self, lines: Iterator[str], response: Any) -> None:
        self._lines = lines
        self._response = response

    def __next__(self) -> str:
        return next(self._lines)

    def close(self) -> None:
        close_response(self._response)


def _keep_open(response: Any) -> Any:
    return response


def stream_lines(response: Any, *, hold_nothing: bool = False) -> Iterator[bytes]:
    """The lines of a streaming response (watch events, logs), without their newline.

    ``hold_nothing``: while waiting for more data, hold no line already handed out nor the
    chunk it came in. urllib3's ``stream()`` keeps its last chunk in its generator until
    the next one arrives, so this reads with ``read1`` instead: a watch of Secrets would
    otherwise keep the last event's values alive until the next bookmark.
    """
    pending = b""
    chunks: Iterator[bytes] = (
        iter(lambda: response.read1(_CHUNK, decode_content=True), b"")
        if hold_nothing
        else response.stream(_CHUNK, decode_content=True)
    )
    for chunk in chunks:
        if not chunk:
            continue
        pending += chunk
        del chunk
        if b"\n" not in pending:
            continue
        *lines, pending = pending.split(b"\n")
        lines.reverse()
        while lines:
            yield lines.pop()
    if pending:
        yield pending


def close_response(response: Any) -> None:
    """Close a streaming response, also from another thread (unblocks a pending read)."""
    # Shutting the socket down first wakes a thread blocked reading it; urllib3 allows it
    # only while the response still holds its connection. Each step is best effort.
    if getattr(response, "_sock_shutdown", None) and getattr(response, "_connection", None):
        with contextlib.suppress(Exception):
            response.shutdown()
    with contextlib.suppress(Exception):
        response.close()
    with contextlib.suppress(Exception):
        response.release_conn()
