"""The campaign's client: a steady, seeded stream of tasks sent to two dispatcher replicas,
with every request and its answer written to the client history.

Each task is planned from ``random.Random(f"{seed}/{index}")`` (``plan_task``), so a seed
names the same stream of tasks; what the faults do to them is up to the run. Kinds: CPU,
A100 and H100 tasks that succeed after a few seconds (the KWOK annotation
``sim.dispatcher.dev/succeed-after``), GPU tasks any model can run (the failover candidates),
tasks that fail (``fail-after``), tasks cancelled shortly after submission, tasks resubmitted
with the same idempotency key by another process (``resubmit.py``), impossible tasks (16 GPUs
on one node), invalid specs (422) and ``keep_pod`` tasks.

``Replicas`` talks to whichever replica leads: a 503 (a follower, or no leader yet) or an
unreachable replica sends the request to the other one, with backoff, until a deadline.

I/O: HTTP to the dispatchers (``dispatcher.client``), a subprocess per resubmission.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from dispatcher.client import ApiClientError, DispatcherClient
from tests.support import ADMIN_TOKEN, FINISHED, REPO, succeed, task

__all__ = ["TASK_KINDS", "Plan", "Replicas", "Sink", "Workload", "plan_task"]

GPU_CLUSTERS = ("gpu-a100", "gpu-h100")

#: Kind -> weight in the stream.
TASK_KINDS: Mapping[str, float] = {
    "cpu_ok": 3.0,
    "a100_ok": 2.0,
    "h100_ok": 1.5,
    "gpu_any": 2.0,
    "fail": 1.0,
    "cancel": 1.5,
    "resubmit": 1.5,
    "impossible": 0.5,
    "invalid": 0.3,
    "keep_pod": 0.5,
}


class Sink(Protocol):
    def write(self, record: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Plan:
    """One task of the stream and what the client will do with it."""

    index: int
    kind: str
    spec: dict[str, Any]
    eligible: tuple[str, ...]
    gpus: int
    gpu_model: str | None
    expect: str  # succeed | fail | cancel | reject | invalid
    cancel_after: float | None = None
    resubmit_after: float | None = None

    @property
    def key(self) -> str:
        return str(self.spec["idempotency_key"])

    def record(self, process: str) -> dict[str, Any]:
        """The ``type: task`` line of the client history."""
        return {
            "type": "task",
            "process": process,
            "index": self.index,
            "key": self.key,
            "task_kind": self.kind,
            "eligible": list(self.eligible),
            "gpus": self.gpus,
            "gpu_model": self.gpu_model,
            "on_finish_action": self.spec.get("on_finish_action", "delete_pod"),
            "expect": self.expect,
            "cancel_after": self.cancel_after,
            "resubmit_after": self.resubmit_after,
        }


def _seconds(rng: random.Random, low: float, high: float) -> str:
    return f"{rng.uniform(low, high):.1f}s"


def plan_task(seed: int, index: int, run: str) -> Plan:
    """Task number ``index`` of the stream of ``seed``; ``run`` keeps keys unique per run."""
    rng = random.Random(f"{seed}/{index}")
    kind = rng.choices(list(TASK_KINDS), weights=list(TASK_KINDS.values()))[0]
    name = f"fc-{kind.replace('_', '-')}-{index}"
    key = f"{run}/{seed}/{index}"
    gpus, model = 0, None
    eligible: tuple[str, ...] = ("plane",)
    if kind == "a100_ok":
        gpus, model, eligible = rng.randint(1, 4), "A100", ("gpu-a100",)
    elif kind == "h100_ok":
        gpus, model, eligible = rng.randint(1, 4), "H100", ("gpu-h100",)
    elif kind in ("gpu_any", "fail", "cancel", "resubmit") and rng.random() < 0.6:
        gpus, eligible = rng.randint(1, 2), GPU_CLUSTERS
    annotations = succeed(_seconds(rng, 2, 8))
    extra: dict[str, Any] = {}
    expect, cancel_after, resubmit_after = "succeed", None, None
    if kind == "fail":
        annotations = {
            "sim.dispatcher.dev/fail-after": _seconds(rng, 1, 4),
            "sim.dispatcher.dev/exit-code": "3",
        }
        expect = "fail"
        if rng.random() < 0.5:
            extra["on_finish_action"] = "delete_succeeded_pod"
    elif kind == "cancel":
        # Runs until deleted: a cancel that leaves its pod behind shows at the end.
        annotations, expect, cancel_after = {}, "cancel", rng.uniform(0.0, 1.5)
    elif kind == "resubmit":
        resubmit_after = rng.uniform(0.0, 3.0)
    elif kind == "impossible":
        gpus, eligible, expect, annotations = 16, (), "reject", {}
    elif kind == "keep_pod":
        annotations = succeed(_seconds(rng, 1, 3))
        extra["on_finish_action"] = "keep_pod"
    spec = task(name, gpus=gpus, model=model, annotations=annotations, **extra)
    spec["idempotency_key"] = key
    if kind == "invalid":
        spec["container_resources"] = {"requests": {"cpu": "lots"}}
        expect, eligible = "invalid", ()
    return Plan(index, kind, spec, eligible, gpus, model, expect, cancel_after, resubmit_after)


@dataclass
class Answer:
    status: int | None
    body: dict[str, Any] | None


class Replicas:
    """The dispatcher API behind several replicas; every HTTP attempt goes to ``sink``."""

    def __init__(
        self, urls: Sequence[str], sink: Sink, process: str, request_timeout: float = 15.0
    ) -> None:
        self._apis = [
            DispatcherClient(url, token=ADMIN_TOKEN, retries=0, timeout=request_timeout)
            for url in urls
        ]
        self._sink = sink
        self._process = process
        self._preferred = 0

    def close(self) -> None:
        for api in self._apis:
            api.close()

    def submit(self, spec: dict[str, Any], deadline: float) -> Answer | None:
        def call(api: DispatcherClient) -> Answer:
            job, created = api.submit(spec)
            return Answer(201 if created else 200, job)

        return self._call("submit", str(spec.get("idempotency_key")), None, call, deadline)

    def wait(self, key: str, job_id: str, timeout: float, deadline: float) -> Answer | None:
        return self._call(
            "wait", key, job_id, lambda api: Answer(200, api.wait(job_id, timeout)), deadline
        )

    def cancel(self, key: str, job_id: str, deadline: float) -> Answer | None:
        return self._call(
            "cancel", key, job_id, lambda api: Answer(200, api.cancel(job_id)), deadline
        )

    def find(self, key: str, deadline: float) -> Answer | None:
        return self._call("find", key, None, lambda api: Answer(200, api.find(key)), deadline)

    def _call(
        self,
        op: str,
        key: str,
        job_id: str | None,
        call: Callable[[DispatcherClient], Answer],
        deadline: float,
    ) -> Answer | None:
        """The first answer that is not "try elsewhere" (503, unreachable); ``None`` once
        ``deadline`` passed without one."""
        delay = 0.2
        while True:
            for offset in range(len(self._apis)):
                index = (self._preferred + offset) % len(self._apis)
                sent = time.monotonic()
                error = None
                try:
                    answer = call(self._apis[index])
                except ApiClientError as exc:
                    answer, error = Answer(exc.status, None), str(exc).splitlines()[0][:200]
                body = answer.body or {}
                self._sink.write(
                    {
                        "type": "request",
                        "process": self._process,
                        "op": op,
                        "key": key,
                        "job_id": body.get("id") or job_id,
                        "replica": index,
                        "sent": sent,
                        "status": answer.status,
                        "state": body.get("state"),
                        "cluster": body.get("cluster"),
                        "attempts": body.get("attempts"),
                        "error": error,
                    }
                )
                if answer.status is not None and answer.status != 503:
                    self._preferred = index
                    return answer
            if time.monotonic() + delay > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def follow(replicas: Replicas, key: str, job_id: str, deadline: Callable[[], float]) -> bool:
    """Long-poll the job until the client reads it finished (``True``) or ``deadline()``."""
    while time.monotonic() < deadline():
        answer = replicas.wait(key, job_id, timeout=10.0, deadline=deadline())
        if answer is None:
            return False
        if answer.status == 200 and (answer.body or {}).get("state") in FINISHED:
            return True
        if answer.status != 200:
            time.sleep(1.0)  # 404 (a leader that lost the job) or 4xx: ask again
    return False


class _Lines:
    """A sink collecting a subprocess's history lines for the parent to write."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def forward(self, output: str) -> None:
        for line in output.splitlines():
            if line.strip():
                try:
                    self._sink.write(json.loads(line))
                except ValueError:
                    self._sink.write({"type": "resubmitter_output", "line": line[:300]})


@dataclass
class Workload:
    """Submits ``plan_task(seed, 0..)`` at ``rate`` tasks per second on a thread pool."""

    seed: int
    run: str
    urls: Sequence[str]
    sink: Sink
    rate: float = 1.0
    threads: int = 24
    _stop: threading.Event = field(default_factory=threading.Event)
    _deadline: float = float("inf")
    _futures: list[Future[None]] = field(default_factory=list)
    _plans: dict[str, Plan] = field(default_factory=dict)
    _submitted: int = 0

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="client")
        self._replicas = Replicas(self.urls, self.sink, "main")
        self._feeder = threading.Thread(target=self._feed, name="client-feed", daemon=True)

    def start(self) -> None:
        self._feeder.start()

    def stop_submitting(self, drain_seconds: float) -> None:
        """No new tasks; every task still waiting gives up ``drain_seconds`` from now."""
        self._deadline = time.monotonic() + drain_seconds
        self._stop.set()
        self._feeder.join()

    def abandon(self) -> None:
        """Stop at once: no new tasks, every client gives up now (idempotent)."""
        self._deadline = min(self._deadline, time.monotonic())
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def drain(self) -> int:
        """Wait for every task's client to finish; the number of tasks submitted."""
        for future in self._futures:
            future.result()
        self._pool.shutdown()
        self._replicas.close()
        return self._submitted

    def unkept_pods(self, alive: Iterable[Iterable[Mapping[str, Any]]]) -> list[Mapping[str, Any]]:
        """Of the pods alive (as the watches see them), those no ``on_finish_action`` keeps."""
        unkept = []
        for pods in alive:
            for pod in pods:
                plan = self._plans.get(str(pod.get("key")))
                action = plan.spec.get("on_finish_action", "delete_pod") if plan else "delete_pod"
                kept = action == "keep_pod" or (
                    action == "delete_succeeded_pod" and pod.get("phase") == "Failed"
                )
                if not kept:
                    unkept.append(pod)
        return unkept

    def _feed(self) -> None:
        rng = random.Random(f"{self.seed}/feed")
        index = 0
        while not self._stop.wait(rng.expovariate(self.rate)):
            self._futures.append(
                self._pool.submit(self._one, plan_task(self.seed, index, self.run))
            )
            index += 1
            self._submitted = index

    def _one(self, plan: Plan) -> None:
        try:
            self._scenario(plan)
        except Exception as exc:  # a client bug must show in the history, not vanish
            self.sink.write({"type": "client_error", "key": plan.key, "error": repr(exc)[:300]})

    def _scenario(self, plan: Plan) -> None:
        self.sink.write(plan.record("main"))
        answer = self._replicas.submit(plan.spec, self._deadline)
        if answer is None or answer.status not in (200, 201) or answer.body is None:
            if answer is None:
                self.sink.write({"type": "gave_up", "key": plan.key, "reason": "submit"})
            return
        job_id = str(answer.body["id"])
        resubmitter = None
        if plan.resubmit_after is not None:
            resubmitter = threading.Timer(plan.resubmit_after, self._resubmit, (plan,))
            resubmitter.start()
        if plan.cancel_after is not None:
            self._stop.wait(plan.cancel_after)
            self._replicas.cancel(plan.key, job_id, self._deadline)
        if not follow(self._replicas, plan.key, job_id, lambda: self._deadline):
            self.sink.write(
                {"type": "gave_up", "key": plan.key, "job_id": job_id, "reason": "wait"}
            )
        if resubmitter is not None:
            resubmitter.join()

    def _resubmit(self, plan: Plan) -> None:
        """Submit the same spec (same key) from another process running the client."""
        command = [
            sys.executable,
            "-m",
            "benchmarks.fault_campaign.resubmit",
            *[arg for url in self.urls for arg in ("--url", url)],
        ]
        proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        pending: str | None = json.dumps(plan.spec)
        while True:
            try:
                out, err = proc.communicate(pending, timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pending = None
                if time.monotonic() > self._deadline:
                    proc.terminate()  # it follows the job as long as we let it
        _Lines(self.sink).forward(out)
        if proc.returncode not in (0, -15):
            self.sink.write({"type": "client_error", "key": plan.key, "error": err[-300:]})
