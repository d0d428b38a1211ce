"""Following a job (``progress.Watch``): what is said, in which order, each log line once,
when the watch is over; and the failure sentence. Pure: no Airflow, no HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.airflow.progress import Progress, Watch, failure_message, format_duration
from tests.airflow.fake_dispatcher import job_view


def feed(watch: Watch, *lines: str, pod: str = "train-abc-1", start: int = 0) -> list[str]:
    said: list[str] = []
    for index, text in enumerate(lines, start):
        said += watch.on_line(pod, index, text).say
    return said


def test_placement_is_said_once_before_the_log_is_followed() -> None:
    watch = Watch(Progress())
    queued = watch.on_job(job_view("queued", reason="waiting for 2 free GPUs"))
    assert queued.say == ("Job j1 is queued: waiting for 2 free GPUs",)
    assert queued.follow is None
    running = watch.on_job(job_view("running"))
    assert running.say == (
        "Job j1 dispatched to cluster gpu-a100: placed on gpu-a100 on 8x NVIDIA-A100",
    )
    assert running.follow == ("train-abc-1", 0)
    assert watch.on_job(job_view("running")).say == ()


def test_a_reread_log_is_logged_from_where_it_stopped() -> None:
    watch = Watch(Progress())
    watch.on_job(job_view("running"))
    assert feed(watch, "a", "b") == ["[base] a", "[base] b"]
    assert feed(watch, "a", "b", "c") == ["[base] c"]
    assert feed(watch, "d", start=2) == []  # out of order: not the next line
    assert watch.progress.lines == 3


def test_a_moved_job_is_announced_and_its_new_pod_followed_from_the_start() -> None:
    watch = Watch(Progress())
    watch.on_job(job_view("running"))
    feed(watch, "a", "b")
    moved = job_view(
        "running",
        cluster="gpu-h100",
        pod="train-abc-2",
        attempts=2,
        history=[
            {"number": 1, "cluster": "gpu-a100", "ended": "cluster gpu-a100 lost"},
            {"number": 2, "cluster": "gpu-h100", "ended": None},
        ],
        reason="placed on gpu-h100",
    )
    actions = watch.on_job(moved)
    assert actions.say == (
        "Job j1 is on cluster gpu-h100 (attempt 2) after leaving gpu-a100 "
        "(cluster gpu-a100 lost): placed on gpu-h100",
    )
    assert actions.follow == ("train-abc-2", 0)
    assert feed(watch, "a", pod="train-abc-1", start=2) == []  # the old pod's stream
    assert feed(watch, "a", pod="train-abc-2") == ["[base] a"]


def test_the_watch_ends_when_the_job_finished_and_its_log_ended_or_went_quiet() -> None:
    watch = Watch(Progress())
    watch.on_job(job_view("running"))
    assert not watch.on_job(job_view("succeeded")).done  # the log may still be arriving
    assert watch.on_log_end("train-abc-1").done
    quiet = Watch(Progress())
    quiet.on_job(job_view("running"))
    assert not quiet.on_quiet().done
    quiet.on_job(job_view("succeeded"))
    assert quiet.on_quiet().done
    assert quiet.needs_catch_up()


def test_without_logs_the_watch_ends_with_the_job() -> None:
    watch = Watch(Progress(), get_logs=False)
    actions = watch.on_job(job_view("running"))
    assert actions.follow is None
    assert watch.on_job(job_view("failed")).done


def test_the_prefix_can_be_dropped() -> None:
    watch = Watch(Progress(), prefix=None)
    watch.on_job(job_view("running"))
    assert feed(watch, "a") == ["a"]


def test_progress_survives_a_deferral() -> None:
    watch = Watch(Progress())
    watch.on_job(job_view("running"))
    feed(watch, "a", "b")
    resumed = Watch(Progress.from_dict(watch.progress.to_dict()))
    assert resumed.on_job(job_view("succeeded")).say == ()
    assert feed(resumed, "a", "b", "c") == ["[base] c"]


def test_a_namespace_the_cluster_replaced_is_said_once_with_the_placement() -> None:
    watch = Watch(Progress(namespace="ml-jobs"))
    said = watch.on_job(job_view("running")).say
    assert said[0].startswith("Job j1 dispatched to cluster gpu-a100")
    assert said[1].startswith(
        "The task asked for namespace 'ml-jobs', which cluster gpu-a100 does not allow: "
        "its pod runs in 'batch'"
    )
    assert watch.on_job(job_view("running")).say == ()
    # Where the namespace was honoured, or none was asked for, nothing is said.
    assert len(Watch(Progress(namespace="batch")).on_job(job_view("running")).say) == 1
    assert len(Watch(Progress()).on_job(job_view("running")).say) == 1
    # A deferral keeps the namespace asked for.
    assert Progress.from_dict(Progress(namespace="ml-jobs").to_dict()).namespace == "ml-jobs"


def test_long_polls_are_short_until_the_pod_runs() -> None:
    watch = Watch(Progress())
    watch.on_job(job_view("queued"))
    waits = [watch.next_wait_seconds(2.0, 60.0) for _ in range(5)]
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0]
    watch.on_job(job_view("running"))
    assert watch.next_wait_seconds(2.0, 60.0) == 60.0
    assert Watch(Progress(), get_logs=False).next_wait_seconds(2.0, 60.0) == 60.0


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (45.4, "45s"), (192, "3m12s"), (7500, "2h05m")]
)
def test_durations_read_like_task_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            {
                "failure": "oom-killed",
                "message": "OOMKilled: container base exceeded memory limit 3Gi (exit code 137)",
            },
            "OOMKilled on gpu-a100 after 3m12s: container base exceeded memory limit 3Gi "
            "(exit code 137) (job j1, failure: oom-killed)",
        ),
        (
            {"failure": "exit-code", "message": "container base exited with code 1: boom"},
            "Failed on gpu-a100 after 3m12s: container base exited with code 1: boom "
            "(job j1, failure: exit-code)",
        ),
        (
            {"state": "cancelled", "message": "cancelled"},
            "Cancelled on gpu-a100 after 3m12s (job j1)",
        ),
        (
            {
                "state": "rejected",
                "cluster": None,
                "message": "largest node has 8 nvidia.com/gpu",
            },
            "Rejected: no cluster can run this task: largest node has 8 nvidia.com/gpu (job j1)",
        ),
    ],
)
def test_failure_messages_say_what_where_and_after_how_long(
    job: dict[str, Any], message: str
) -> None:
    assert failure_message(job_view(job.pop("state", "failed"), **job)) == message


def test_a_queued_job_says_where_it_stands_each_time_that_changes() -> None:
    watch = Watch(Progress())

    def queued(message: str) -> dict[str, Any]:
        return job_view("queued", reason="no room", queue={"message": message})

    first = watch.on_job(queued("16 a100 GPUs on one node; largest free block 6; 2 ahead"))
    assert first.say == (
        "Job j1 is queued: no room",
        "Job j1 waits for 16 a100 GPUs on one node; largest free block 6; 2 ahead",
    )
    assert watch.on_job(queued("16 a100 GPUs on one node; largest free block 6; 2 ahead")).say == ()
    # Not said again after a hand-over to the trigger (the progress travels as a dict).
    watch = Watch(Progress.from_dict(watch.progress.to_dict()))
    assert watch.on_job(queued("16 a100 GPUs on one node; largest free block 6; 2 ahead")).say == ()
    assert watch.on_job(queued("16 a100 GPUs on one node; largest free block 8; 1 ahead")).say == (
        "Job j1 waits for 16 a100 GPUs on one node; largest free block 8; 1 ahead",
    )


def test_what_was_materialised_in_the_cluster_is_said_once_by_name() -> None:
    copied = "Secret regcred copied to gpu-a100/batch from plane/batch/regcred"
    attempt = {"number": 1, "cluster": "gpu-a100", "pod": "train-abc-1", "materialised": []}
    watch = Watch(Progress())
    # Launching: the pod's create has not answered, nothing is known to be copied yet.
    assert len(watch.on_job(job_view("pending", history=[attempt])).say) == 1
    done = {**attempt, "materialised": [copied]}
    said = watch.on_job(job_view("running", history=[done])).say
    assert said == (f"Materialised in cluster gpu-a100 before the pod: {copied}",)
    assert watch.on_job(job_view("running", history=[done])).say == ()
    # A deferral remembers it was said.
    resumed = Watch(Progress.from_dict(watch.progress.to_dict()))
    assert resumed.on_job(job_view("running", history=[done])).say == ()
