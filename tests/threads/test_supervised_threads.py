"""No thread dies silently: a supervised body that raises is logged, counted and restarted
after a growing backoff; one that keeps failing, or cannot continue, makes the process
unhealthy and says which thread and why. Pure threads, no stack; backoff sleeps are
recorded by a fake ``wait`` instead of slept."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import structlog

from dispatcher.metrics import sample_value
from dispatcher.supervise import CannotContinue, SupervisedThread, Supervisor, SupervisorPolicy

POLICY = SupervisorPolicy(
    max_failures=3, backoff_base_seconds=1.0, backoff_max_seconds=8.0, backoff_jitter=0.0
)


class FakeWait:
    """Records every sleep and returns at once."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        return False


@pytest.fixture
def wait() -> FakeWait:
    return FakeWait()


@pytest.fixture
def supervisor(wait: FakeWait) -> Iterator[Supervisor]:
    supervisor = Supervisor(POLICY, wait=wait, draw=lambda: 0.5)
    yield supervisor
    assert supervisor.stop(5), "a supervised thread did not stop"


def restarts(thread: str) -> float:
    return sample_value("dispatcher_thread_restarts_total", {"thread": thread})


def test_an_exception_is_logged_counted_and_the_body_restarted(supervisor: Supervisor) -> None:
    calls = 0
    second_run = threading.Event()

    def body(thread: SupervisedThread) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in round one")
        second_run.set()
        thread.wait(60)  # runs until stopped

    before = restarts("t-restart")
    with structlog.testing.capture_logs() as logs:
        thread = supervisor.spawn("t-restart", body)
        assert second_run.wait(5), "the body was not restarted"
    assert thread.name == "t-restart"
    assert restarts("t-restart") == before + 1
    failed = [e for e in logs if e["event"] == "thread.failed"]
    assert len(failed) == 1
    assert failed[0]["thread"] == "t-restart"
    assert failed[0]["log_level"] == "error"
    assert failed[0]["exc_info"] is True
    assert supervisor.healthy() == (True, "ok")


def test_backoff_grows_with_failures_in_a_row_and_is_capped(
    supervisor: Supervisor, wait: FakeWait
) -> None:
    done = threading.Event()
    calls = 0

    def body(thread: SupervisedThread) -> None:
        nonlocal calls
        calls += 1
        if calls <= 6:
            raise ValueError(f"failure {calls}")
        done.set()
        thread.wait(60)

    supervisor.spawn("t-backoff", body)
    assert done.wait(5)
    # base 1 s doubling, capped at 8 s (no jitter in this policy); the last sleep is the
    # body's own wait(60).
    assert wait.sleeps[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_ok_starts_the_count_of_failures_in_a_row_over(
    supervisor: Supervisor, wait: FakeWait
) -> None:
    done = threading.Event()
    calls = 0

    def body(thread: SupervisedThread) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            thread.ok()  # this run made progress before failing
        if calls <= 4:
            raise RuntimeError("again")
        done.set()
        thread.wait(60)

    supervisor.spawn("t-ok", body)
    assert done.wait(5)
    assert wait.sleeps[:4] == [1.0, 2.0, 1.0, 2.0]


def test_failing_max_failures_times_in_a_row_is_unhealthy_with_the_reason() -> None:
    after_two = threading.Event()
    go_on = threading.Event()
    fourth_run = threading.Event()
    sleeps = 0

    def wait(seconds: float) -> bool:
        # The restart backoff: hold after the second failure so the test can look.
        nonlocal sleeps
        sleeps += 1
        if sleeps == 2:
            after_two.set()
            go_on.wait(5)
        return False

    calls = 0

    def body(thread: SupervisedThread) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ConnectionError("nobody answers")
        fourth_run.set()
        thread.wait(60)

    supervisor = Supervisor(POLICY, wait=wait, draw=lambda: 0.5)
    try:
        supervisor.spawn("t-unhealthy", body)
        assert after_two.wait(5)
        assert supervisor.healthy() == (True, "ok"), "two failures in a row are tolerated"
        go_on.set()
        assert fourth_run.wait(5)
        # Still restarted (the fourth run is going), but unhealthy until it calls ok().
        assert supervisor.healthy() == (
            False,
            "thread t-unhealthy failed 3 times in a row (last: ConnectionError)",
        )
    finally:
        go_on.set()
        assert supervisor.stop(5)


def test_a_body_that_cannot_continue_ends_unhealthy_for_good(supervisor: Supervisor) -> None:
    def body(thread: SupervisedThread) -> None:
        raise CannotContinue("the lease namespace does not exist")

    thread = supervisor.spawn("t-give-up", body)
    assert thread.join(5)
    assert supervisor.healthy() == (
        False,
        "thread t-give-up stopped: the lease namespace does not exist",
    )
    assert restarts("t-give-up") == 0


def test_a_loop_that_returns_before_being_stopped_is_unhealthy(supervisor: Supervisor) -> None:
    thread = supervisor.spawn("t-returns", lambda thread: None)
    assert thread.join(5)
    assert supervisor.healthy() == (
        False,
        "thread t-returns stopped: its loop returned before it was stopped",
    )


def test_stop_ends_waiting_bodies_and_leaves_the_supervisor_healthy() -> None:
    # The real wait (the thread's stop event): stop() must interrupt a long sleep.
    supervisor = Supervisor(POLICY)
    started = threading.Event()

    def body(thread: SupervisedThread) -> None:
        started.set()
        while not thread.wait(3600):
            pass

    supervisor.spawn("t-stop", body)
    assert started.wait(5)
    assert supervisor.stop(5)
    assert supervisor.threads() == ()
    assert supervisor.healthy() == (True, "ok")


def test_several_unhealthy_threads_are_all_named(supervisor: Supervisor) -> None:
    def give_up(reason: str) -> object:
        def body(thread: SupervisedThread) -> None:
            raise CannotContinue(reason)

        return body

    a = supervisor.spawn("t-a", give_up("first"))  # type: ignore[arg-type]
    b = supervisor.spawn("t-b", give_up("second"))  # type: ignore[arg-type]
    assert a.join(5)
    assert b.join(5)
    assert supervisor.healthy() == (
        False,
        "thread t-a stopped: first; thread t-b stopped: second",
    )
