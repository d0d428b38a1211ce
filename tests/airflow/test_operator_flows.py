"""The operator and the trigger against a scripted dispatcher (no stack): what the task
log says and in which order, each log line once, results, failures, deferral, re-attach,
on_kill."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    TaskDeferred,
)

from dispatcher.airflow import DispatcherJobFailed, DispatcherJobTrigger, DispatcherPodOperator
from dispatcher.airflow import triggers as triggers_module
from dispatcher.airflow.aio import AsyncDispatcherClient
from dispatcher.airflow.connection import ConnectionSettings
from dispatcher.airflow.hooks import DispatcherHook
from dispatcher.airflow.parameters import idempotency_key
from dispatcher.client import DispatcherClient
from tests.airflow.fake_dispatcher import BASE, FakeDispatcher, job_view

SETTINGS = ConnectionSettings(base_url=BASE, retries=0, wait_timeout=5.0)
LOG = ["step 1/3", "step 2/3", "step 3/3", "done"]


@dataclass
class FakeTI:
    dag_id: str = "train_model"
    task_id: str = "train"
    run_id: str = "manual__2024-06-01T00:00:00+00:00"
    map_index: int = -1
    try_number: int = 1


def context(ti: FakeTI | None = None) -> Any:
    return {"ti": ti or FakeTI()}


@pytest.fixture
def said(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the operator writes to the task log about the job and from the pod."""
    lines: list[str] = []
    monkeypatch.setattr(DispatcherPodOperator, "_say", lambda self, line: lines.append(line))
    return lines


def use(fake: FakeDispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DispatcherHook, "settings", property(lambda self: SETTINGS))
    monkeypatch.setattr(
        DispatcherHook,
        "new_client",
        lambda self: DispatcherClient(
            BASE, transport=fake.transport(), retries=0, sleep=lambda _: None
        ),
    )

    async def settings(self: DispatcherJobTrigger) -> ConnectionSettings:
        return SETTINGS

    monkeypatch.setattr(DispatcherJobTrigger, "_settings", settings)
    monkeypatch.setattr(
        triggers_module,
        "AsyncDispatcherClient",
        lambda settings: AsyncDispatcherClient(settings, transport=fake.async_transport()),
    )


def operator(**kwargs: Any) -> DispatcherPodOperator:
    defaults: dict[str, Any] = {
        "task_id": "train",
        "image": "trainer:1",
        "cmds": ["python", "-m", "train"],
        "gpus": 2,
        "poll_interval": 0.05,
    }
    return DispatcherPodOperator(**{**defaults, **kwargs})


def pod_lines(said: list[str]) -> list[str]:
    return [line.removeprefix("[base] ") for line in said if line.startswith("[base] ")]


def test_the_routing_decision_comes_first_then_each_log_line_once_in_order(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDispatcher(
        states=[
            job_view("queued"),
            job_view("running"),
            job_view("running"),
            job_view("succeeded", result={"accuracy": 0.93}),
        ],
        log=LOG,
        cut_reads={0: 2},  # the first stream drops after two lines
    )
    use(fake, monkeypatch)
    result = operator(do_xcom_push=True).execute(context())
    assert result == {"accuracy": 0.93}
    assert said[0] == "Job j1 is queued: placed on gpu-a100 on 8x NVIDIA-A100"
    assert said[1] == "Job j1 dispatched to cluster gpu-a100"
    assert pod_lines(said) == LOG
    assert fake.log_reads >= 2
    assert ("POST", "/v1/jobs/j1/acknowledge") in fake.requests
    submitted = fake.submitted[0]
    assert submitted["idempotency_key"] == idempotency_key(
        "train_model", "train", "manual__2024-06-01T00:00:00+00:00", -1, 1
    )
    assert submitted["labels"]["dag_id"] == "train_model"
    assert submitted["requirements"] == {"gpus": 2}


def test_the_dag_owner_becomes_requirements_owner_unless_it_is_airflows_default(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDispatcher(states=[job_view("succeeded")])
    use(fake, monkeypatch)
    operator(owner="vision, alice").execute(context())
    assert fake.submitted[-1]["requirements"] == {"owner": "vision", "gpus": 2}
    operator().execute(context())  # owner "airflow": nobody in particular
    assert "owner" not in fake.submitted[-1]["requirements"]


def test_without_do_xcom_push_the_result_is_not_returned(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use(FakeDispatcher(states=[job_view("succeeded", result={"a": 1})]), monkeypatch)
    assert operator().execute(context()) is None


def test_a_failed_job_raises_its_classification_and_message(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = job_view(
        "failed",
        failure="oom-killed",
        exit_code=137,
        message="OOMKilled: container base exceeded memory limit 3Gi (exit code 137)",
    )
    use(FakeDispatcher(states=[job_view("running"), failed]), monkeypatch)
    with pytest.raises(DispatcherJobFailed) as raised:
        operator().execute(context())
    assert str(raised.value) == (
        "OOMKilled on gpu-a100 after 3m12s: container base exceeded memory limit 3Gi "
        "(exit code 137) (job j1, failure: oom-killed)"
    )
    assert raised.value.failure == "oom-killed"


def test_an_impossible_task_fails_without_retries(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rejected = job_view("rejected", message="largest node has 8 nvidia.com/gpu")
    use(FakeDispatcher(states=[rejected]), monkeypatch)
    with pytest.raises(AirflowFailException, match="largest node has 8"):
        operator().execute(context())


def test_skip_on_exit_code_skips_instead_of_failing(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = job_view(
        "failed", failure="exit-code", exit_code=3, message="container base exited with code 3"
    )
    use(FakeDispatcher(states=[failed]), monkeypatch)
    with pytest.raises(AirflowSkipException):
        operator(skip_on_exit_code=[3, 4]).execute(context())


def test_a_later_try_takes_over_the_job_of_an_earlier_try_still_running(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ti = FakeTI(try_number=3)
    earlier = idempotency_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index, 1)
    fake = FakeDispatcher(
        states=[job_view("running"), job_view("succeeded")], known={earlier: job_view("running")}
    )
    use(fake, monkeypatch)
    operator().execute(context(ti))
    assert fake.submitted == []  # tries 2 and 1 were looked up; try 1's job was taken over
    lookups = [r for r in fake.requests if r == ("GET", "/v1/jobs")]
    assert len(lookups) == 2


def test_a_later_try_submits_anew_when_the_earlier_job_finished(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ti = FakeTI(try_number=2)
    earlier = idempotency_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index, 1)
    fake = FakeDispatcher(
        states=[job_view("succeeded")], known={earlier: job_view("failed", failure="exit-code")}
    )
    use(fake, monkeypatch)
    operator().execute(context(ti))
    assert len(fake.submitted) == 1


def test_on_kill_cancels_the_job(said: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDispatcher(states=[job_view("running")])
    use(fake, monkeypatch)
    task = operator()
    task.job_id = "j1"
    task.on_kill()
    assert ("POST", "/v1/jobs/j1/cancel") in fake.requests


def test_deferred_the_trigger_streams_the_log_and_the_resumed_task_adds_nothing(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDispatcher(
        states=[
            job_view("pending"),
            job_view("running"),
            job_view("succeeded", result={"accuracy": 0.5}),
        ],
        log=LOG,
        cut_reads={0: 1},
    )
    use(fake, monkeypatch)
    task = operator(deferrable=True, do_xcom_push=True)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context())
    assert deferred.value.method_name == "execute_complete"
    trigger = deferred.value.trigger
    assert isinstance(trigger, DispatcherJobTrigger)
    # The trigger travels as (class path, kwargs) and is rebuilt in the triggerer.
    classpath, kwargs = trigger.serialize()
    assert classpath == "dispatcher.airflow.triggers.DispatcherJobTrigger"
    rebuilt = DispatcherJobTrigger(**kwargs)
    trigger_said: list[str] = []

    class Recorder:
        def info(self, fmt: str, *args: Any) -> None:
            trigger_said.append(fmt % args)

    rebuilt._log = Recorder()  # what the trigger writes to the task log

    async def first_event() -> Any:
        async for event in rebuilt.run():
            return event
        return None

    event = asyncio.run(first_event())
    assert event.payload["status"] == "finished"
    assert pod_lines(trigger_said) == LOG
    result = task.execute_complete(context(), event.payload)
    assert result == {"accuracy": 0.5}
    assert pod_lines(said) == []  # nothing logged twice after resuming
    assert said[0].startswith("Job j1 dispatched to cluster gpu-a100")


def test_a_resumed_task_reads_what_the_trigger_could_not(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDispatcher(states=[job_view("succeeded")], log=LOG)
    use(fake, monkeypatch)
    event = {
        "status": "finished",
        "job": job_view("succeeded"),
        "progress": {"pod": "train-abc-1", "lines": 2, "announced": "gpu-a100/train-abc-1"},
        "caught_up": False,
    }
    operator(deferrable=True).execute_complete(context(), event)
    assert pod_lines(said) == LOG[2:]


def test_killing_a_deferred_task_cancels_the_job_from_the_triggerer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeDispatcher(states=[job_view("running")])
    use(fake, monkeypatch)
    asyncio.run(DispatcherJobTrigger(job_id="j1").on_kill())
    assert ("POST", "/v1/jobs/j1/cancel") in fake.requests


def test_a_trigger_that_cannot_reach_the_dispatcher_fails_the_task(
    said: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDispatcher(states=[job_view("running")])
    use(fake, monkeypatch)
    monkeypatch.setattr(
        triggers_module,
        "AsyncDispatcherClient",
        lambda settings: AsyncDispatcherClient(
            settings,
            transport=httpx.MockTransport(lambda r: httpx.Response(401, json={"detail": "no"})),
        ),
    )

    async def first_event() -> Any:
        async for event in DispatcherJobTrigger(job_id="j1").run():
            return event
        return None

    event = asyncio.run(first_event())
    assert event.payload["status"] == "error"
    with pytest.raises(AirflowException, match="lost track of job j1: no"):
        operator(deferrable=True).execute_complete(context(), event.payload)
