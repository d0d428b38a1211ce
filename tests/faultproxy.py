"""A fault-injecting HTTPS proxy in front of a real Kubernetes API server, for tests.

``FaultProxy`` listens on a local port, terminates TLS with a certificate of the stack's CA
(so clients keep verifying the server as they would the API server), and forwards each
HTTP request over a fresh TLS connection to the upstream API server. Between the two it
does what its current mode says, switchable at any time from the test:

- ``Pass()``: forward unchanged; responses are streamed through chunk by chunk, so watches
  and followed logs work as they do without the proxy;
- ``Delay(seconds)``: wait, then forward (latency);
- ``Answer(status, retry_after=None)``: answer at once with a Kubernetes ``Status`` body
  (429 ``TooManyRequests`` with ``Retry-After``, 503 ``ServiceUnavailable``, any other);
- ``Drop()``: close the client's connection without an answer (a crashed server);
- ``Hang()``: hold the request without an answer (a stuck server; the client's read
  timeout fires) until the mode changes, then handle it as the new mode says.

``set_mode(mode, path=None)`` applies the mode to requests whose path matches the regular
expression ``path`` (others pass); ``cut_streams()`` breaks every response being streamed
now (watches, followed logs: those without a Content-Length), as a network failure would,
and leaves idle keep-alive connections alone; ``streams()`` counts them. ``seen`` counts
requests by the mode that handled them. Authentication headers pass through untouched:
bearer tokens work, client certificates do not (TLS ends at the proxy).

Thread-based (one thread per client connection), standard library only. I/O: a listening
socket on ``host`` and TLS connections to the upstream.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import re
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.stack import StackEnv

__all__ = ["Answer", "Delay", "Drop", "FaultProxy", "Hang", "Mode", "Pass", "for_stack"]

_CHUNK = 64 * 1024
#: Hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy sets itself.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_REASONS = {
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True)
class Pass:
    """Forward unchanged."""


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then forward."""

    seconds: float


@dataclass(frozen=True)
class Answer:
    """Answer ``status`` with a Kubernetes ``Status`` body; ``retry_after`` sets both the
    ``Retry-After`` header and ``details.retryAfterSeconds``."""

    status: int
    retry_after: int | None = None
    message: str = "injected by the fault proxy"


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer."""


@dataclass(frozen=True)
class Hang:
    """Hold requests unanswered until the mode changes (then the new mode handles them)."""


Mode = Pass | Delay | Answer | Drop | Hang


def _name(mode: Mode) -> str:
    if isinstance(mode, Answer):
        return f"answer-{mode.status}"
    return type(mode).__name__.lower()


def status_body(answer: Answer) -> bytes:
    """The ``Status`` object an API server would send for ``answer.status``."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": answer.message,
        "reason": _REASONS.get(answer.status, ""),
        "code": answer.status,
    }
    if answer.retry_after is not None:
        body["details"] = {"retryAfterSeconds": answer.retry_after}
    return json.dumps(body).encode()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens on the connection's own thread, not the accept loop.
        try:
            tls = self.proxy._server_tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            with contextlib.suppress(OSError):
                request.close()
            return
        try:
            with self.proxy._track(tls):
                super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-stream is normal here; tracebacks would be noise.
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        proxy = self.server.proxy
        mode = proxy._mode_for(self.path)
        proxy._count(_name(mode))
        body = self._read_body()
        while isinstance(mode, Hang):
            # Held until the mode changes; then handled as the new mode says.
            proxy._wait_while(mode)
            if proxy._closed.is_set():
                self.close_connection = True
                return
            mode = proxy._mode_for(self.path)
        if isinstance(mode, Delay) and proxy._closed.wait(mode.seconds):
            return
        if isinstance(mode, Drop):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(mode, Answer):
            self._answer(mode)
            return
        self._forward(body)

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return None

    def _answer(self, answer: Answer) -> None:
        data = status_body(answer)
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if answer.retry_after is not None:
            self.send_header("Retry-After", str(answer.retry_after))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _forward(self, body: bytes | None) -> None:
        proxy = self.server.proxy
        upstream = proxy._upstream_connection()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
        except (OSError, http.client.HTTPException):
            upstream.close()
            self.close_connection = True
            return
        with contextlib.closing(upstream):
            self._relay(response, upstream.sock)

    def _relay(self, response: http.client.HTTPResponse, upstream: Any) -> None:
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        for key, value in response.getheaders():
            if key.lower() not in _NOT_FORWARDED:
                self.send_header(key, value)
        streamed = length is None and self.command != "HEAD"
        if streamed:
            self.send_header("Transfer-Encoding", "chunked")
        elif length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        tracked = (
            self.server.proxy._track(self.connection, upstream, stream=True)
            if streamed
            else contextlib.nullcontext()
        )
        try:
            with tracked:
                self._copy(response, streamed)
        except (OSError, http.client.HTTPException):
            # Either side went away mid-body: the client must see a broken stream, not a
            # complete one.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _copy(self, response: http.client.HTTPResponse, streamed: bool) -> None:
        while True:
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            if streamed:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                self.wfile.write(chunk)
            self.wfile.flush()
        if streamed:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()


# http.server dispatches on ``do_<METHOD>``: every method goes through one handler.
for _method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
    setattr(_Handler, f"do_{_method}", _Handler._handle)


class FaultProxy:
    """An HTTPS proxy to ``upstream_url`` that injects faults on demand (module doc).

    ``ca_file`` verifies the upstream; ``cert_file``/``key_file`` are the proxy's own
    serving certificate (one the clients trust: the stack's serving certificate does).
    Starts serving at once; ``url`` is where clients connect. Use as a context manager or
    call ``close()``.
    """

    def __init__(
        self,
        upstream_url: str,
        ca_file: str | Path,
        *,
        cert_file: str | Path,
        key_file: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout: float | None = None,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "https" or parts.hostname is None:
            raise ValueError(f"upstream must be an https:// URL, not {upstream_url!r}")
        self._upstream = (parts.hostname, parts.port or 443)
        self._upstream_timeout = upstream_timeout
        self._client_tls = ssl.create_default_context(cafile=str(ca_file))
        self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_tls.load_cert_chain(str(cert_file), str(key_file))
        self._lock = threading.Condition()
        self._mode: Mode = Pass()
        self._path: re.Pattern[str] | None = None
        self._seen: Counter[str] = Counter()
        self._open: set[Any] = set()
        self._streams: set[Any] = set()
        self._closed = threading.Event()
        self._host = host
        self._server = _Server((host, port), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"faultproxy-{self.port}",
            daemon=True,
        )
        self._thread.start()

    # ----- the test's side ---------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    def set_mode(self, mode: Mode, path: str | None = None) -> None:
        """Handle new requests (those whose path matches ``path``, if given) with ``mode``.

        Requests already hanging are released; streams already open are not touched
        (see ``cut_streams``).
        """
        with self._lock:
            self._mode = mode
            self._path = re.compile(path) if path is not None else None
            self._lock.notify_all()

    def seen(self, mode: str | None = None) -> int:
        """Requests handled so far, by mode name (``pass``, ``answer-429``, ``drop``...)."""
        with self._lock:
            return sum(self._seen.values()) if mode is None else self._seen[mode]

    def streams(self) -> int:
        """Responses being streamed now (open watches, followed logs)."""
        with self._lock:
            return len(self._streams) // 2

    def cut_streams(self) -> int:
        """Break every response being streamed now (both of its connections); returns how
        many streams were cut."""
        with self._lock:
            sockets = list(self._streams)
        _shut(sockets)
        return len(sockets) // 2

    def close(self) -> None:
        """Stop listening and break every open connection."""
        self._closed.set()
        with self._lock:
            self._lock.notify_all()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._open | self._streams)
        _shut(sockets)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- the handlers' side --------------------------------------------------------------
    def _mode_for(self, path: str) -> Mode:
        with self._lock:
            if self._path is not None and not self._path.search(path):
                return Pass()
            return self._mode

    def _count(self, name: str) -> None:
        with self._lock:
            self._seen[name] += 1

    def _wait_while(self, mode: Mode) -> None:
        with self._lock:
            while self._mode == mode and not self._closed.is_set():
                self._lock.wait(0.5)

    def _upstream_connection(self) -> http.client.HTTPSConnection:
        host, port = self._upstream
        return http.client.HTTPSConnection(
            host, port, context=self._client_tls, timeout=self._upstream_timeout
        )

    @contextlib.contextmanager
    def _track(self, *sockets: Any, stream: bool = False) -> Iterator[None]:
        """Know ``sockets`` while the block runs: as connections, or as one stream."""
        where = self._streams if stream else self._open
        with self._lock:
            where.update(sockets)
        try:
            yield
        finally:
            with self._lock:
                where.difference_update(sockets)


def _shut(sockets: list[Any]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def for_stack(env: StackEnv, cluster: str, **kwargs: Any) -> FaultProxy:
    """A proxy in front of one of the test stack's API servers (``StackEnv``, cluster name),
    serving the stack's own certificate, so the cluster's CA file verifies it."""
    pki = Path(env.ca_file).parent
    return FaultProxy(
        env.clusters[cluster].server,
        env.ca_file,
        cert_file=pki / "serving.crt",
        key_file=pki / "serving.key",
        **kwargs,
    )
