"""Every log line written while the API serves a job's request names that job.

A fake runtime stands in for the service (pure API-layer logic; the real service is tested
end to end in tests/e2e).
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from dispatcher.api.app import create_app
from dispatcher.api.auth import DEVELOPMENT_PRINCIPAL
from dispatcher.core.tenancy import Principal


class _Dispatcher:
    def listen(self, listener: Any) -> None:
        pass

    def cancel(self, job_id: str) -> dict[str, Any]:
        # Deeper layers log without naming the job; the bound context must add it.
        structlog.get_logger("deeper").info("pod.delete_requested")
        raise _Gone(job_id)


class _Gone(Exception):
    pass


class _Runtime:
    dispatcher: Any = _Dispatcher()

    def ready(self) -> tuple[bool, str]:
        return True, "ready"

    def leading(self) -> bool:
        return True

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def snapshot(self) -> Any:
        raise AssertionError("not used")

    def authenticate(self, authorization: str | None) -> Principal:
        return DEVELOPMENT_PRINCIPAL


def test_logs_written_while_serving_a_job_request_carry_its_id() -> None:
    app = create_app(_Runtime())  # type: ignore[arg-type]

    @app.exception_handler(_Gone)
    def _gone(_: Any, exc: _Gone) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "gone"})

    with (
        structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs,
        TestClient(app) as http,
    ):
        assert http.post("/v1/jobs/j123/cancel").status_code == 404
        assert http.get("/healthz").status_code == 200
        structlog.get_logger("after").info("unrelated")

    events = {entry["event"]: entry for entry in logs}
    assert events["pod.delete_requested"]["job_id"] == "j123"
    assert "job_id" not in events["unrelated"]
