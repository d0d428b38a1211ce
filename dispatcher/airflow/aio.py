"""The few dispatcher API calls a trigger makes, without blocking the triggerer's loop.

The async twin of ``dispatcher.client.DispatcherClient`` for what ``DispatcherJobTrigger``
needs (get, wait, logs, cancel), with the same behaviour: transient failures (unreachable,
502/503/504, 503 + ``Retry-After`` from a replica that is not the leader, 429 +
``Retry-After`` to a caller with too many long polls open) are retried with backoff,
anything else raises ``ApiClientError``.

I/O: HTTP to one dispatcher (httpx.AsyncClient).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from dispatcher.airflow.connection import BearerAuth, ConnectionSettings, RotatingToken
from dispatcher.client import ApiClientError, error_from_response, retry_after

__all__ = ["AsyncDispatcherClient"]

#: 429: this caller has too many long polls open (``service.max_waits_per_client``).
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class AsyncDispatcherClient:
    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            # The token file, if any, is read again whenever it changes (rotation).
            auth=BearerAuth(RotatingToken(settings.token)),
            verify=settings.verify,
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            transport=transport,
        )
        self._retries = settings.retries
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDispatcherClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delay = 0.5
        for attempt in range(self._retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self._retries:
                    raise ApiClientError(None, f"cannot reach the dispatcher: {exc}") from exc
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if response.status_code in _RETRY_STATUSES and attempt < self._retries:
                await self._sleep(retry_after(response) or delay)
                delay = min(delay * 2, 10.0)
                continue
            if response.status_code >= 400:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, job_id: str) -> dict[str, Any]:
        return dict((await self._request("GET", f"/v1/jobs/{job_id}")).json())

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Long poll: the job once finished, or as it is after ``timeout`` seconds."""
        response = await self._request(
            "GET",
            f"/v1/jobs/{job_id}/wait",
            params={"timeout": timeout},
            timeout=httpx.Timeout(timeout + 30.0, connect=10.0),
        )
        return dict(response.json())

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return dict((await self._request("POST", f"/v1/jobs/{job_id}/cancel")).json())

    async def logs(self, job_id: str, *, follow: bool = False) -> AsyncIterator[str]:
        """The job's container log, line by line (not retried: the caller re-reads)."""
        async with self._http.stream(
            "GET",
            f"/v1/jobs/{job_id}/logs",
            params={"follow": follow},
            timeout=httpx.Timeout(None if follow else 60.0, connect=10.0),
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise error_from_response(response)
            async for line in response.aiter_lines():
                yield line
