"""``/healthz`` answers for the supervised threads: 200 while they can go on, 503 naming the
thread and why once one cannot (so the kubelet restarts the process)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fastapi.testclient import TestClient

from dispatcher.api.app import create_app
from dispatcher.api.auth import DEVELOPMENT_PRINCIPAL
from dispatcher.core.tenancy import Principal
from dispatcher.supervise import CannotContinue, SupervisedThread, Supervisor


class _Runtime:
    dispatcher: Any = SimpleNamespace(listen=lambda listener: None)

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def ready(self) -> tuple[bool, str]:
        return True, "ready"

    def healthy(self) -> tuple[bool, str]:
        return self.supervisor.healthy()

    def leading(self) -> bool:
        return True

    def snapshot(self) -> Any:
        raise AssertionError("not used")

    def authenticate(self, authorization: str | None) -> Principal:
        return DEVELOPMENT_PRINCIPAL


def test_healthz_fails_with_the_thread_that_cannot_continue() -> None:
    supervisor = Supervisor()
    http = TestClient(create_app(_Runtime(supervisor)))  # type: ignore[arg-type]
    assert (http.get("/healthz").status_code, http.get("/healthz").text) == (200, "ok")

    def body(thread: SupervisedThread) -> None:
        raise CannotContinue("could not start leading 3 times in a row")

    assert supervisor.spawn("kd-leader-election", body).join(5)
    answer = http.get("/healthz")
    assert answer.status_code == 503
    assert answer.text == (
        "thread kd-leader-election stopped: could not start leading 3 times in a row"
    )
