"""A pod whose init container fails is classified as such, not as "unknown": the test
stack's KWOK stage reports it as the kubelet does (``sim.dispatcher.dev/init-fail-after``)."""

from __future__ import annotations

from dispatcher.client import DispatcherClient
from tests.support import finish, task


def test_a_failed_init_container_fails_the_job_saying_which_and_how(
    api: DispatcherClient,
) -> None:
    spec = task(
        "initfail",
        init_containers=[
            {"name": "fetch-data", "image": "busybox:1.36", "command": ["false"]},
            {"name": "warm-cache", "image": "busybox:1.36"},
        ],
        annotations={
            "sim.dispatcher.dev/init-fail-after": "1s",
            "sim.dispatcher.dev/exit-code": "3",
        },
    )
    job = finish(api, api.submit(spec)[0]["id"])
    assert job["state"] == "failed", job
    assert job["failure"] == "init-container", job
    assert job["message"] == (
        "init container fetch-data exited with code 3; the task's container never started"
    )
    # The task's own exit code is unknown: skip_on_exit_code must not match an init's.
    assert job["exit_code"] is None
