"""What time brings a job (``dispatching.timers``): pure, so each rule is checked at the
moment it starts to hold and the moment before."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dispatcher.core import FailureClass
from dispatcher.core.lifecycle import Event, State
from dispatcher.dispatching.facts import RESOLVE_SAFETY_SECONDS
from dispatcher.dispatching.jobs import Attempt, Job
from dispatcher.dispatching.mailbox import RESOLVE
from dispatcher.dispatching.timers import UNREACHABLE, finished_due, live_due
from dispatcher.settings import ServiceSettings, UnreachablePolicy
from tests.unit.factories import task

SERVICE = ServiceSettings(schedule_timeout_seconds=60, finished_ttl_seconds=3600)
WAIT = UnreachablePolicy()
RELAUNCH = UnreachablePolicy(action="relaunch", relaunch_after_seconds=120)


def job(state: State = State.PENDING, **fields: object) -> Job:
    spec = task(startup_timeout_seconds=30)
    attempt = Attempt(0, "gpu-a100", "p-0", "dispatch", created_at=0.0)
    return replace(
        Job(id="j1", spec=spec, submitted_at=0.0, state=state, attempt=attempt), **fields
    )


def kinds(due: object) -> list[Event | str]:
    return [post.kind for post in due.posts]  # type: ignore[attr-defined]


def test_a_due_read_is_posted_and_its_timer_cleared() -> None:
    due = live_due(job(resolve_at=10.0), 10.0, down_since=None, policy=WAIT, service=SERVICE)
    assert kinds(due) == [RESOLVE]
    assert due.touch == {"resolve_at": None}
    early = live_due(job(resolve_at=10.0), 9.9, down_since=None, policy=WAIT, service=SERVICE)
    assert kinds(early) == []


@pytest.mark.parametrize("state", [State.LAUNCHING, State.CANCELLING, State.MOVING])
def test_a_state_waiting_for_its_pod_always_has_a_read_scheduled(state: State) -> None:
    due = live_due(job(state), 100.0, down_since=None, policy=WAIT, service=SERVICE)
    assert due.touch == {"resolve_at": 100.0 + RESOLVE_SAFETY_SECONDS}


def test_an_unreachable_cluster_is_noted_once_and_its_return_too() -> None:
    down = live_due(job(State.RUNNING), 50.0, down_since=20.0, policy=WAIT, service=SERVICE)
    assert kinds(down) == [Event.NOTE]
    note = down.posts[0].payload
    assert (note["type"], note["status"]) == (UNREACHABLE, True)
    noted = job(State.RUNNING).with_condition(UNREACHABLE, True, "x", "y", 50.0)
    again = live_due(noted, 60.0, down_since=20.0, policy=WAIT, service=SERVICE)
    assert kinds(again) == []
    back = live_due(noted, 70.0, down_since=None, policy=WAIT, service=SERVICE)
    assert kinds(back) == [Event.NOTE]
    assert back.posts[0].payload["status"] is False


def test_the_wait_policy_never_relaunches() -> None:
    noted = job(State.RUNNING).with_condition(UNREACHABLE, True, "x", "y", 0.0)
    due = live_due(noted, 10**6, down_since=0.0, policy=WAIT, service=SERVICE)
    assert kinds(due) == []


def test_the_relaunch_policy_abandons_at_its_time_not_before() -> None:
    noted = job(State.RUNNING).with_condition(UNREACHABLE, True, "x", "y", 0.0)
    before = live_due(noted, 119.9, down_since=0.0, policy=RELAUNCH, service=SERVICE)
    assert kinds(before) == []
    at = live_due(noted, 120.0, down_since=0.0, policy=RELAUNCH, service=SERVICE)
    assert kinds(at) == [Event.ABANDON]
    assert at.posts[0].failover == "cluster_down"


def test_the_relaunch_policy_does_not_spend_the_last_attempt() -> None:
    spent = ServiceSettings(max_attempts=1)
    noted = job(State.RUNNING).with_condition(UNREACHABLE, True, "x", "y", 0.0)
    due = live_due(noted, 10**6, down_since=0.0, policy=RELAUNCH, service=spent)
    assert kinds(due) == []


def test_an_unschedulable_pod_moves_after_the_schedule_timeout() -> None:
    stuck = job(unschedulable_since=0.0)
    assert kinds(live_due(stuck, 59.0, down_since=None, policy=WAIT, service=SERVICE)) == []
    due = live_due(stuck, 60.0, down_since=None, policy=WAIT, service=SERVICE)
    assert kinds(due) == [Event.MOVE]
    assert due.posts[0].failover == "unschedulable"


def test_a_container_that_does_not_start_fails_after_the_startup_timeout() -> None:
    waiting = job(waiting_since=100.0, failure=FailureClass.IMAGE_PULL, reason="ErrImagePull")
    assert kinds(live_due(waiting, 129.0, down_since=None, policy=WAIT, service=SERVICE)) == []
    due = live_due(waiting, 130.0, down_since=None, policy=WAIT, service=SERVICE)
    assert kinds(due) == [Event.FAIL]
    assert due.posts[0].payload["failure"] is FailureClass.IMAGE_PULL
    assert "ErrImagePull" in due.posts[0].payload["message"]


def test_timeouts_do_not_run_while_the_cluster_is_unreachable() -> None:
    stuck = job(unschedulable_since=0.0).with_condition(UNREACHABLE, True, "x", "y", 0.0)
    due = live_due(stuck, 10**6, down_since=0.0, policy=WAIT, service=SERVICE)
    assert kinds(due) == []


def test_a_finished_pod_lingers_then_the_job_expires() -> None:
    done = job(State.SUCCEEDED, finished_at=0.0, cleanup_due=30.0)
    assert kinds(finished_due(done, 29.0, SERVICE)) == []
    linger = finished_due(done, 30.0, SERVICE)
    assert kinds(linger) == [Event.LINGER_DUE]
    assert linger.touch == {"cleanup_due": None, "cleaned": True}
    assert kinds(finished_due(replace(done, cleanup_due=None), 3600.5, SERVICE)) == [Event.FORGET]
