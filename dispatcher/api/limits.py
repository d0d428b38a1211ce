"""Limits at the HTTP edge: request body size (413) and JSON nesting depth (422).

``BodyLimit`` is an ASGI middleware: a declared ``Content-Length`` over the limit is
answered at once, and a body that grows past it while being read (chunked) is cut off
with the same 413 before the endpoint sees it. ``json_depth_problem`` measures nesting in
one pass over the bytes, before any parser recurses into them.

I/O: none of its own (it wraps the app's receive and send).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "json_depth_problem"]


class _TooLarge(Exception):
    pass


def _too_large(max_bytes: int) -> tuple[Message, Message]:
    body = json.dumps(
        {
            "error": "too_large",
            "detail": f"the request body is larger than {max_bytes} bytes (service.max_body_bytes)",
            "problems": [],
        }
    ).encode()
    start: Message = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            for message in _too_large(self.max_bytes):
                await send(message)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            for message in _too_large(self.max_bytes):
                await send(message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def json_depth_problem(raw: bytes, max_depth: int) -> str | None:
    """Why ``raw`` is nested too deeply for the API (``None``: it is not). Brackets inside
    strings do not count; invalid JSON is left to the parser to describe."""
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return (
                    f"the request body is nested deeper than {max_depth} levels "
                    "(service.max_json_depth)"
                )
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return None
