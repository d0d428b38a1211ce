"""The API under waiting clients, on the real stack (not a timed test; prints measured figures).

``python -m benchmarks.bench_api_load [--waits 1000] [--follows 200] [--seconds 20]
[--baseline-commit REF]``

One ``dispatcher serve`` process (this checkout; ``--baseline-commit REF`` also runs that
commit's, from a temporary ``git worktree``, first) gets two jobs whose pods run until
deleted. Then ``--waits`` long polls (``/wait?timeout=300``) and ``--follows`` log follows
of those jobs are opened, each on its own connection (one asyncio client process); once
every follow streams (each first asks its pod's API server for the log, through the
cluster's client rate limiter, 20 QPS by default), or after 20 s, they are held for
``--seconds`` while ``/healthz`` is requested every 0.1 s and a task is submitted
every 0.5 s, one at a time. Reports the held long requests, ``/healthz`` and submission
latency p50 / p99 / max, and requests that got no answer within 10 s (counted as 10 s).
Today's run allows the follows per caller (``service.max_log_follows_per_client``); the
baseline knows no such setting.

Runs on its own stack instance (``KD_STACK_DIR``/``KD_STACK_PORT_BASE`` default to
``/tmp/kd-stack-bench`` and 32400).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("KD_STACK_DIR", "/tmp/kd-stack-bench")  # noqa: S108 - a scratch stack
os.environ.setdefault("KD_STACK_PORT_BASE", "32400")

from benchmarks.bench_dispatch import Serve, _delete_pods, _load, _new_namespace, _worktree
from tests.stack.dispatcher_config import dispatcher_settings
from tests.stack.launcher import Stack
from tests.support import ADMIN_HEADERS, REPO, task

#: A probe or a submission not answered within this is counted as this long.
GIVE_UP_SECONDS = 10.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def _timed(call: Any) -> tuple[float, bool]:
    started = time.monotonic()
    try:
        answer = await asyncio.wait_for(call, GIVE_UP_SECONDS)
    except (TimeoutError, httpx.HTTPError):
        return GIVE_UP_SECONDS, False
    return time.monotonic() - started, answer.status_code < 400


async def _load_run(url: str, jobs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    held = httpx.AsyncClient(
        base_url=url,
        headers=ADMIN_HEADERS,
        timeout=httpx.Timeout(400.0, connect=30.0),
        limits=limits,
    )
    waits = [
        asyncio.create_task(held.get(f"/v1/jobs/{jobs[i % 2]}/wait?timeout=300"))
        for i in range(args.waits)
    ]
    follows: list[Any] = []
    async with contextlib.AsyncExitStack() as streams:
        for i in range(args.follows):
            request = held.build_request("GET", f"/v1/jobs/{jobs[i % 2]}/logs?follow=true")
            follows.append(asyncio.create_task(held.send(request, stream=True)))
            streams.push_async_callback(_close_follow, follows[-1])
        # Every follow streaming (each made one request to its pod's API server, paced by
        # the cluster's client QPS), or 20 s: the baseline's never all start.
        if follows:
            await asyncio.wait(follows, timeout=20)
        await asyncio.sleep(1)
        probes: list[float] = []
        submits: list[float] = []
        failed = {"healthz": 0, "submit": 0}
        async with httpx.AsyncClient(base_url=url, headers=ADMIN_HEADERS) as short:

            async def probe() -> None:
                while True:
                    seconds, ok = await _timed(short.get("/healthz"))
                    probes.append(seconds)
                    failed["healthz"] += not ok
                    await asyncio.sleep(0.1)

            async def submit() -> None:
                while True:
                    spec = task(
                        "bench-submit", annotations={"sim.dispatcher.dev/succeed-after": "1s"}
                    )
                    seconds, ok = await _timed(short.post("/v1/jobs", json=spec))
                    submits.append(seconds)
                    failed["submit"] += not ok
                    await asyncio.sleep(0.5)

            running = [asyncio.create_task(probe()), asyncio.create_task(submit())]
            await asyncio.sleep(args.seconds)
            for loop in running:
                loop.cancel()
        answered_early = sum(w.done() for w in waits)
        follows_open = sum(
            1 for f in follows if f.done() and not f.exception() and f.result().status_code == 200
        )
        for wait in waits:
            wait.cancel()
    await held.aclose()
    return {
        "waits": args.waits,
        "waits_answered_early": answered_early,
        "follows": args.follows,
        "follows_streaming": follows_open,
        "healthz": {**_summary(probes), "samples": len(probes), "failed": failed["healthz"]},
        "submit": {**_summary(submits), "samples": len(submits), "failed": failed["submit"]},
    }


async def _close_follow(follow: asyncio.Task[httpx.Response]) -> None:
    if not follow.done():
        follow.cancel()
        return
    with contextlib.suppress(Exception):
        await follow.result().aclose()


def _run(stack: Stack, code: str, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    namespace = _new_namespace(stack)
    folder = Path(f"/tmp/kd-bench-api-{code}")  # noqa: S108 - scratch settings
    service: dict[str, Any] = {}
    if code == "today":
        service["max_log_follows_per_client"] = max(args.follows, 1)
        service["max_log_follows"] = max(args.follows, 1)
    config = dispatcher_settings(stack, folder, namespace=namespace, service=service)
    serve = Serve(config, folder / "serve.log", repo=repo)
    serve.start()
    try:
        with serve.client() as api:
            jobs = [api.submit(task(f"forever-{i}"))[0]["id"] for i in range(2)]
            deadline = time.monotonic() + 60
            while any(api.get(j)["state"] != "running" for j in jobs):
                if time.monotonic() > deadline:
                    raise RuntimeError("the two jobs did not run within 60 s")
                time.sleep(0.5)
            idle = [
                httpx.get(f"{serve.url}/healthz", timeout=GIVE_UP_SECONDS).elapsed.total_seconds()
                for _ in range(20)
            ]
            results = asyncio.run(_load_run(serve.url, jobs, args))
            results["healthz_idle"] = _summary(idle)
            for job in jobs:
                with contextlib.suppress(Exception):
                    api.cancel(job)
    finally:
        serve.stop()
        _delete_pods(stack, namespace)
    return {"code": code, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waits", type=int, default=1000)
    parser.add_argument("--follows", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--baseline-commit", metavar="REF")
    args = parser.parse_args()
    print(f"start: load average {_load()}", flush=True)
    stack = Stack()
    stack.up()
    with contextlib.ExitStack() as cleanup:
        runs = []
        if args.baseline_commit:
            runs.append(("baseline", cleanup.enter_context(_worktree(args.baseline_commit))))
        runs.append(("today", REPO))
        for code, repo in runs:
            print(f"{code}: load average {_load()}", flush=True)
            print(json.dumps(_run(stack, code, repo, args)), flush=True)
    print(f"end: load average {_load()}", flush=True)


if __name__ == "__main__":
    main()
