"""Waiting clients cannot starve the API, and each caller's long requests are bounded.

``dispatcher serve`` runs as a process on the real stack; real HTTP clients (one thread and
connection each) open more long polls and log follows than anyio's default thread pool has
worker threads (40). The probes and ordinary reads must still answer: each is waited for
with a generous timeout (far shorter than the long polls' own), never timed to the
millisecond. A caller over its bound gets a 429 with ``Retry-After`` naming the setting,
while another caller goes on.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest

from dispatcher.client import DispatcherClient
from tests.support import ADMIN_HEADERS, ADMIN_TOKEN, ServiceProcess, task, wait_until

#: More than anyio's default thread pool has tokens (40).
LONG_REQUESTS = 60
#: A long poll's own timeout: it must not be what ends them in these tests.
WAIT_SECONDS = 300
#: How long a probe or a short request may take under that load before the test fails.
PROMPT_SECONDS = 30
OTHER_TOKEN = "other-caller-token"


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def long_polls(
    url: str, paths: list[str], headers: dict[str, str]
) -> Iterator[list[Future[httpx.Response]]]:
    """Send every request from its own thread and connection; yield the futures of the
    responses once each request was sent in full (its client waits for the answer)."""
    sent = [threading.Event() for _ in paths]

    def request(index: int, path: str) -> httpx.Response:
        def trace(event: str, _: Any) -> None:
            if event == "http11.receive_response_headers.started":
                sent[index].set()

        with httpx.Client(base_url=url, headers=headers, timeout=WAIT_SECONDS + 60) as http:
            return http.get(path, extensions={"trace": trace})

    pool = ThreadPoolExecutor(max_workers=len(paths))
    try:
        futures = [pool.submit(request, i, path) for i, path in enumerate(paths)]
        for event in sent:
            assert event.wait(PROMPT_SECONDS), "a long request could not be sent"
        yield futures
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def follows(url: str, path: str, headers: dict[str, str], count: int) -> Iterator[list[int]]:
    """Open ``count`` log follows, each on its own connection; yield their statuses once
    every one has its response headers. Leaving closes them unread (the clients go away)."""
    with ExitStack() as streams:
        yield [
            streams.enter_context(
                httpx.stream("GET", f"{url}{path}", headers=headers, timeout=PROMPT_SECONDS)
            ).status_code
            for _ in range(count)
        ]


def long_requests_gauge(url: str, kind: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=PROMPT_SECONDS).text
    found = re.search(rf'^dispatcher_api_long_requests{{kind="{kind}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def answered(future: Future[httpx.Response]) -> httpx.Response:
    return future.result(timeout=PROMPT_SECONDS)


def test_probes_and_reads_answer_while_more_long_polls_wait_than_there_are_worker_threads(
    service: ServiceProcess, api: DispatcherClient
) -> None:
    # Pods without a simulation annotation run until deleted: nothing finishes by itself.
    jobs = [api.submit(task(f"forever-{i}"))[0] for i in range(2)]
    paths = [
        f"/v1/jobs/{jobs[i % 2]['id']}/wait?timeout={WAIT_SECONDS}" for i in range(LONG_REQUESTS)
    ]
    with long_polls(service.url, paths, ADMIN_HEADERS) as waits:
        health = httpx.get(f"{service.url}/healthz", timeout=PROMPT_SECONDS)
        assert (health.status_code, health.text) == (200, "ok")
        ready = httpx.get(f"{service.url}/readyz", timeout=PROMPT_SECONDS)
        assert (ready.status_code, ready.text) == (200, "ready")
        listed = httpx.get(f"{service.url}/v1/jobs", headers=ADMIN_HEADERS, timeout=PROMPT_SECONDS)
        assert listed.status_code == 200
        assert {j["id"] for j in listed.json()} == {j["id"] for j in jobs}
        # The server holds every one of them (none was refused or answered early) ...
        wait_until(
            lambda: long_requests_gauge(service.url, "wait") == LONG_REQUESTS,
            what=f"{LONG_REQUESTS} waits open",
        )
        assert not any(f.done() for f in waits)
        # ... and still answers at once.
        health = httpx.get(f"{service.url}/healthz", timeout=PROMPT_SECONDS)
        assert health.status_code == 200

        # A change wakes exactly the long polls of its job, at once (not at their timeout).
        api.cancel(jobs[0]["id"])
        first = [answered(f) for f in waits[0::2]]
        assert {(r.status_code, r.json()["state"]) for r in first} == {(200, "cancelled")}
        assert not any(f.done() for f in waits[1::2])
        api.cancel(jobs[1]["id"])
        second = [answered(f) for f in waits[1::2]]
        assert {(r.status_code, r.json()["state"]) for r in second} == {(200, "cancelled")}
    wait_until(lambda: long_requests_gauge(service.url, "wait") == 0, what="no wait open")


def test_probes_and_reads_answer_while_more_logs_are_followed_than_there_are_worker_threads(
    service: ServiceProcess, api: DispatcherClient
) -> None:
    job, _ = api.submit(task("talker"))
    wait_until(lambda: api.get(job["id"])["state"] == "running", what="running")
    path = f"/v1/jobs/{job['id']}/logs?follow=true"
    with follows(service.url, path, ADMIN_HEADERS, LONG_REQUESTS) as statuses:
        assert statuses == [200] * LONG_REQUESTS
        health = httpx.get(f"{service.url}/healthz", timeout=PROMPT_SECONDS)
        assert (health.status_code, health.text) == (200, "ok")
        listed = httpx.get(f"{service.url}/v1/jobs", headers=ADMIN_HEADERS, timeout=PROMPT_SECONDS)
        assert [j["id"] for j in listed.json()] == [job["id"]]
        assert long_requests_gauge(service.url, "follow") == LONG_REQUESTS
    # Their clients went away while the pod runs on: the server closes every stream.
    wait_until(lambda: long_requests_gauge(service.url, "follow") == 0, what="follows closed")
    api.cancel(job["id"])


@pytest.fixture
def two_callers(service_factory: Any) -> ServiceProcess:
    """A service whose callers may each have 3 long polls and 2 log follows open; ``other``
    may read the admin's jobs."""
    service: ServiceProcess = service_factory(
        tenants={"other": {"read_others": True}},
        auth={
            "static_tokens": [
                {"sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(), "tenant": "admin"},
                {"sha256": hashlib.sha256(OTHER_TOKEN.encode()).hexdigest(), "tenant": "other"},
            ]
        },
        max_waits_per_client=3,
        max_log_follows_per_client=2,
    )
    return service


def test_a_caller_over_its_long_poll_bound_gets_429_and_another_caller_still_waits(
    two_callers: ServiceProcess,
) -> None:
    url = two_callers.url
    with two_callers.client() as api:
        job, _ = api.submit(task("forever"))
        wait = f"/v1/jobs/{job['id']}/wait?timeout={WAIT_SECONDS}"
        with long_polls(url, [wait] * 3, ADMIN_HEADERS) as mine:
            wait_until(lambda: long_requests_gauge(url, "wait") == 3, what="3 waits open")
            refused = httpx.get(f"{url}{wait}", headers=ADMIN_HEADERS, timeout=PROMPT_SECONDS)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "5"
            assert refused.json()["error"] == "too_many_requests"
            assert "service.max_waits_per_client" in refused.json()["detail"]

            # Another caller is not affected: its long polls are held and answered.
            with long_polls(url, [wait], _headers(OTHER_TOKEN)) as theirs:
                wait_until(lambda: long_requests_gauge(url, "wait") == 4, what="4 waits open")
                api.cancel(job["id"])
                assert answered(theirs[0]).json()["state"] == "cancelled"
            assert {answered(f).json()["state"] for f in mine} == {"cancelled"}
        # Answered long polls give their slots back.
        again = httpx.get(f"{url}{wait}", headers=ADMIN_HEADERS, timeout=PROMPT_SECONDS)
        assert (again.status_code, again.json()["state"]) == (200, "cancelled")


def test_a_caller_over_its_follow_bound_gets_429_and_a_closed_follow_frees_its_slot(
    two_callers: ServiceProcess,
) -> None:
    url = two_callers.url
    with two_callers.client() as api:
        job, _ = api.submit(task("talker"))
        wait_until(lambda: api.get(job["id"])["state"] == "running", what="running")
        follow = f"/v1/jobs/{job['id']}/logs?follow=true"
        with follows(url, follow, ADMIN_HEADERS, 2) as statuses:
            assert statuses == [200, 200]
            refused = httpx.get(f"{url}{follow}", headers=ADMIN_HEADERS, timeout=PROMPT_SECONDS)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "5"
            assert "service.max_log_follows_per_client" in refused.json()["detail"]
            with follows(url, follow, _headers(OTHER_TOKEN), 2) as theirs:
                assert theirs == [200, 200]
        # The clients went away without reading to the end: the server notices, closes
        # their streams and frees their slots while the pod still runs.
        wait_until(lambda: long_requests_gauge(url, "follow") == 0, what="follows closed")
        with follows(url, follow, ADMIN_HEADERS, 2) as again:
            assert again == [200, 200]
        api.cancel(job["id"])
