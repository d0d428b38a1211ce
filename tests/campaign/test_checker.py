"""The fault campaign's checker, fed small hand-made histories: one per violation, each must
be named, and one clean history that passes (no stack; the checker reads only files)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fault_campaign.checker import (
    FINAL_STATE_CHANGED,
    FINAL_STATE_MISSING,
    KEY_WITH_MANY_JOBS,
    OVERLAPPING_PODS,
    POD_AFTER_CANCEL,
    POD_AFTER_FINAL_STATE,
    POD_FOR_REJECTED,
    POD_LEFT_BEHIND,
    SLOW_FAILOVER,
    Report,
    check,
    load_history,
    main,
)
from benchmarks.fault_campaign.records import HistoryFiles

#: Wall clock = mono + this, as in a real history.
EPOCH = 1_800_000_000.0
GPU_CLUSTERS = {
    "gpu-a100": {"nodes": [{"name": f"a{i}", "gpus": 8, "gpu_model": "A100"} for i in range(2)]},
    "gpu-h100": {"nodes": [{"name": "h0", "gpus": 8, "gpu_model": "H100"}]},
    "plane": {"nodes": [{"name": "p0", "gpus": 0}]},
}


class Story:
    """A history told event by event, at given seconds; ``judge()`` writes and checks it."""

    def __init__(self, tmp_path: Path, **meta: Any) -> None:
        self.folder = tmp_path / "history"
        self.meta: dict[str, Any] = {
            "seed": 7,
            "namespace": "fc-test",
            "clusters": GPU_CLUSTERS,
            "failover_bound_seconds": 60,
            "observation_tolerance_seconds": 0.5,
            "lease_duration_seconds": 15,
            "unreachable_policy": {c: {"action": "wait"} for c in GPU_CLUSTERS},
            **meta,
        }
        self.pods: list[dict[str, Any]] = []
        self.client: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self._fault_ids = 0

    # ----- the client ---------------------------------------------------------------
    def task(
        self,
        key: str,
        *,
        kind: str = "cpu_ok",
        eligible: tuple[str, ...] = ("plane",),
        gpus: int = 0,
        on_finish_action: str = "delete_pod",
        expect: str = "succeed",
        at: float = 0.0,
    ) -> str:
        self.client.append(
            _at(
                at,
                type="task",
                key=key,
                task_kind=kind,
                eligible=list(eligible),
                gpus=gpus,
                gpu_model=None,
                on_finish_action=on_finish_action,
                expect=expect,
            )
        )
        return key

    def request(
        self, at: float, op: str, key: str, job: str | None, status: int, state: str | None
    ) -> None:
        self.client.append(
            _at(
                at,
                type="request",
                op=op,
                key=key,
                job_id=job,
                status=status,
                state=state,
                sent=at - 0.05,
                process="main",
            )
        )

    def submit(
        self, at: float, key: str, job: str, state: str = "queued", status: int = 201
    ) -> None:
        self.request(at, "submit", key, job, status, state)

    def read(self, at: float, key: str, job: str, state: str) -> None:
        self.request(at, "wait", key, job, 200, state)

    def cancel(self, at: float, key: str, job: str, state: str = "cancelled") -> None:
        self.request(at, "cancel", key, job, 200, state)

    # ----- the watches --------------------------------------------------------------
    def pod(
        self,
        cluster: str,
        job: str,
        attempt: int,
        created: float,
        running: float | None = None,
        deleted: float | None = None,
        *,
        phase_at_end: str | None = None,
        node: str | None = None,
        gpus: int = 0,
        key: str | None = None,
        synthetic: tuple[str, ...] = (),
        seen: float | None = None,
    ) -> str:
        """A pod's events; ``seen``: when a pod created during a watch gap was first listed."""
        uid = uuid.uuid4().hex
        base = {
            "cluster": cluster,
            "pod": f"{job}-{attempt}",
            "uid": uid,
            "namespace": self.meta["namespace"],
            "job_id": job,
            "attempt": attempt,
            "key": key,
            "gpus": gpus,
            "created_at": _rfc3339(created),
            "deletion_timestamp": None,
        }
        self.pods.append(
            _at(
                created if seen is None else seen,
                **base,
                event="ADDED",
                phase="Pending",
                node=None,
                synthetic="ADDED" in synthetic,
            )
        )
        if running is not None:
            self.pods.append(
                _at(
                    running,
                    **base,
                    event="MODIFIED",
                    phase="Running",
                    node=node or "n",
                    synthetic=False,
                )
            )
        if deleted is not None:
            self.pods.append(
                _at(
                    deleted,
                    **base,
                    event="DELETED",
                    phase=phase_at_end or "Running",
                    node=node,
                    synthetic="DELETED" in synthetic,
                )
            )
        return uid

    def gap(self, cluster: str, since: float, resumed: float) -> None:
        self.pods.append(_at(since + 0.01, cluster=cluster, event="WATCH_GAP", since=since))
        self.pods.append(
            _at(
                resumed,
                cluster=cluster,
                event="WATCH_RESUMED",
                since=since,
                gap_seconds=resumed - since,
            )
        )

    # ----- faults -------------------------------------------------------------------
    def fault(self, kind: str, start: float, end: float, **target: Any) -> None:
        self._fault_ids += 1
        for phase, moment in (("start", start), ("end", end)):
            self.faults.append(
                _at(
                    moment,
                    type="fault",
                    fault_id=self._fault_ids,
                    kind=kind,
                    phase=phase,
                    target=target,
                )
            )

    # ----- the verdict --------------------------------------------------------------
    def judge(self, end: float = 200.0) -> Report:
        for cluster in GPU_CLUSTERS:
            self.pods.append(_at(end, cluster=cluster, event="WATCH_STOPPED", complete=True))
        files = HistoryFiles(self.folder)
        files.write_meta(self.meta)
        for writer, records in (
            (files.pods, self.pods),
            (files.client, self.client),
            (files.faults, self.faults),
        ):
            for record in sorted(records, key=lambda r: r["mono"]):
                writer.write(record)
        files.close()
        return check(load_history(self.folder))


def _at(moment: float, **fields: Any) -> dict[str, Any]:
    return {"mono": moment, "t": EPOCH + moment, **fields}


def _rfc3339(moment: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(EPOCH + moment), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def story(tmp_path: Path) -> Story:
    return Story(tmp_path)


def one_finished_job(story: Story, key: str = "k1", job: str = "j1") -> None:
    story.task(key)
    story.submit(1, key, job)
    story.pod("plane", job, 0, created=2, running=3, deleted=9, phase_at_end="Succeeded")
    story.read(8, key, job, "succeeded")


def gpu_job(
    story: Story,
    key: str,
    job: str,
    cluster: str,
    submitted: float,
    running: float,
    ended: float,
    gpus: int = 1,
    eligible: tuple[str, ...] = ("gpu-a100", "gpu-h100"),
) -> None:
    """A GPU task submitted, run on ``cluster`` (pod created a second before running),
    succeeded at ``ended`` and read so just before."""
    story.task(
        key, kind="gpu_any" if len(eligible) > 1 else "gpu_one", eligible=eligible, gpus=gpus
    )
    story.submit(submitted, key, job)
    node = "h0" if cluster == "gpu-h100" else "a0"
    story.pod(
        cluster,
        job,
        0,
        created=running - 1,
        running=running,
        deleted=ended,
        node=node,
        gpus=gpus,
        phase_at_end="Succeeded",
    )
    story.read(ended - 1, key, job, "succeeded")


# ----------------------------------------------------------------------------- clean


def test_a_clean_history_passes_and_reports_its_figures(story: Story, capsys: Any) -> None:
    one_finished_job(story)
    # A GPU job that the client cancelled: its pod goes after the answer, none comes later.
    story.task("k2", kind="cancel", eligible=("gpu-a100",), gpus=1, expect="cancel")
    story.submit(10, "k2", "j2")
    story.pod("gpu-a100", "j2", 0, created=10.5, running=11, deleted=12.5, node="a0", gpus=1)
    story.cancel(12, "k2", "j2")
    story.read(13, "k2", "j2", "cancelled")
    # An impossible task, answered rejected, with no pod.
    story.task("k3", kind="impossible", expect="reject", gpus=16)
    story.submit(14, "k3", "j3", state="rejected")
    # A resubmission of the same key from another process: the same job.
    story.task("k4")
    story.submit(15, "k4", "j4")
    story.submit(16, "k4", "j4", status=200, state="running")
    story.pod("plane", "j4", 0, created=15.5, running=16, deleted=21, phase_at_end="Succeeded")
    story.read(20, "k4", "j4", "succeeded")
    story.read(21, "k4", "j4", "succeeded")
    # keep_pod: its pod stays after the campaign, as the task asked.
    story.task("k5", on_finish_action="keep_pod")
    story.submit(22, "k5", "j5")
    story.pod("plane", "j5", 0, created=23, running=24)
    story.read(26, "k5", "j5", "succeeded")
    # gpu-a100 lost: a task that could use either GPU cluster runs on gpu-h100 in time.
    story.fault("apiserver_down", 30, 90, cluster="gpu-a100")
    story.gap("gpu-a100", 30, 91)
    gpu_job(story, "k6", "j6", "gpu-h100", submitted=35, running=51, ended=60, gpus=2)
    gpu_job(story, "k8", "j8", "gpu-h100", submitted=28, running=40, ended=45)
    # The leader killed at 100; the next accepted submission at 118.
    story.fault("kill_leader", 100, 110, replica=0)
    story.task("k7")
    story.submit(118, "k7", "j7")
    story.pod("plane", "j7", 0, created=119, running=120, deleted=125, phase_at_end="Succeeded")
    story.read(124, "k7", "j7", "succeeded")

    report = story.judge()

    assert report.ok, report.table()
    assert report.stats["creates_per_job"] == {1: 7, 0: 1}
    assert report.stats["failover_latencies"] == [10.0]
    assert report.stats["submitted_during_loss_latencies"] == [16.0]
    assert report.stats["leader_recoveries"] == [18.0]
    assert main([str(story.folder)]) == 0
    printed = capsys.readouterr().out
    assert "apiserver_down" in printed
    assert "PASS" in printed


# ----------------------------------------------------------------------------- one per violation


def test_two_pods_of_one_job_alive_at_once_are_named(story: Story) -> None:
    story.task("k", kind="gpu_any", eligible=("gpu-a100", "gpu-h100"), gpus=1)
    story.submit(1, "k", "j")
    story.pod("gpu-a100", "j", 0, created=2, running=3, deleted=30)
    story.pod("gpu-h100", "j", 1, created=20, running=21, deleted=40, phase_at_end="Succeeded")
    story.read(39, "k", "j", "succeeded")

    report = story.judge()

    assert report.names() == {OVERLAPPING_PODS}
    assert "alive together for 10.0s" in report.violations[0].detail


def test_an_overlap_the_relaunch_policy_allows_is_reported_apart(tmp_path: Path) -> None:
    story = Story(
        tmp_path,
        unreachable_policy={
            "gpu-a100": {"action": "relaunch", "after_seconds": 20},
            "gpu-h100": {"action": "wait"},
        },
    )
    story.task("k", kind="gpu_any", eligible=("gpu-a100", "gpu-h100"), gpus=1)
    story.submit(1, "k", "j")
    story.fault("apiserver_down", 10, 50, cluster="gpu-a100")
    story.gap("gpu-a100", 10, 51)
    # Alive through the outage as far as anyone knows; deleted once its cluster is back.
    story.pod("gpu-a100", "j", 0, created=2, running=3, deleted=52, synthetic=("DELETED",))
    story.pod("gpu-h100", "j", 1, created=35, running=36, deleted=45, phase_at_end="Succeeded")
    story.read(44, "k", "j", "succeeded")

    report = story.judge()

    assert report.ok, report.table()
    assert [(o.job_id, round(o.seconds)) for o in report.allowed_overlaps] == [("j", 10)]


def test_a_relaunch_sooner_than_the_policy_allows_is_an_overlap(tmp_path: Path) -> None:
    story = Story(
        tmp_path, unreachable_policy={"gpu-a100": {"action": "relaunch", "after_seconds": 60}}
    )
    story.task("k", kind="gpu_any", eligible=("gpu-a100", "gpu-h100"), gpus=1)
    story.submit(1, "k", "j")
    story.fault("apiserver_down", 10, 50, cluster="gpu-a100")
    story.gap("gpu-a100", 10, 51)
    story.pod("gpu-a100", "j", 0, created=2, running=3, deleted=52, synthetic=("DELETED",))
    story.pod("gpu-h100", "j", 1, created=35, running=36, deleted=45, phase_at_end="Succeeded")
    story.read(44, "k", "j", "succeeded")

    assert story.judge().names() == {OVERLAPPING_PODS}


def test_a_pod_seen_again_after_a_watch_gap_counts_as_alive_through_the_gap(story: Story) -> None:
    story.task("k", kind="gpu_any", eligible=("gpu-a100", "gpu-h100"), gpus=1)
    story.submit(1, "k", "j")
    story.gap("gpu-a100", 10, 40)
    # Deleted at some time in the gap: the relist at 40 is all the history knows.
    story.pod("gpu-a100", "j", 0, created=2, running=3, deleted=40, synthetic=("DELETED",))
    story.pod("gpu-h100", "j", 1, created=25, running=26, deleted=45, phase_at_end="Succeeded")
    story.read(44, "k", "j", "succeeded")

    assert story.judge().names() == {OVERLAPPING_PODS}


def test_a_pod_first_listed_after_a_gap_counts_from_its_creation_timestamp(
    story: Story,
) -> None:
    story.task("k", kind="gpu_any", eligible=("gpu-a100", "gpu-h100"), gpus=1)
    story.submit(1, "k", "j")
    story.pod("gpu-h100", "j", 0, created=2, running=3, deleted=30)
    story.gap("gpu-a100", 10, 40)
    story.pod(
        "gpu-a100",
        "j",
        1,
        created=20,
        seen=40,
        running=41,
        deleted=45,
        phase_at_end="Succeeded",
        synthetic=("ADDED",),
    )
    story.read(44, "k", "j", "succeeded")

    report = story.judge()

    assert report.names() == {OVERLAPPING_PODS}
    assert "for 10.0s" in report.violations[0].detail


def test_a_pod_created_after_the_cancel_was_answered_is_named(story: Story) -> None:
    story.task("k", kind="cancel", expect="cancel")
    story.submit(1, "k", "j")
    story.cancel(1.2, "k", "j")
    story.pod("plane", "j", 0, created=2, running=3, deleted=4)
    story.read(5, "k", "j", "cancelled")

    assert story.judge().names() == {POD_AFTER_CANCEL}


def test_a_pod_created_after_the_client_read_success_is_named(story: Story) -> None:
    one_finished_job(story)
    story.pod("plane", "j1", 1, created=20, running=21, deleted=25, phase_at_end="Succeeded")

    assert story.judge().names() == {POD_AFTER_FINAL_STATE}


def test_a_pod_of_a_rejected_job_is_named(story: Story) -> None:
    story.task("k", kind="impossible", expect="reject", gpus=16)
    story.submit(1, "k", "j", state="rejected")
    story.pod("gpu-a100", "j", 0, created=2, deleted=3)

    assert story.judge().names() == {POD_FOR_REJECTED}


def test_a_pod_for_a_refused_submission_is_named(story: Story) -> None:
    story.task("k", kind="invalid", expect="invalid")
    story.request(1, "submit", "k", None, 422, None)
    story.pod("plane", "jx", 0, created=2, deleted=3, key="k")

    assert story.judge().names() == {POD_FOR_REJECTED}


def test_a_job_whose_final_state_the_client_never_read_is_named(story: Story) -> None:
    story.task("k")
    story.submit(1, "k", "j")
    story.pod("plane", "j", 0, created=2, running=3, deleted=9, phase_at_end="Succeeded")
    story.read(60, "k", "j", "running")

    report = story.judge()

    assert report.names() == {FINAL_STATE_MISSING}
    assert "last read: running" in report.violations[0].detail


def test_a_job_read_with_two_outcomes_is_named(story: Story) -> None:
    one_finished_job(story)
    story.read(30, "k1", "j1", "failed")

    assert story.judge().names() == {FINAL_STATE_CHANGED}


def test_a_finished_job_read_unfinished_afterwards_is_named(story: Story) -> None:
    one_finished_job(story)
    story.read(30, "k1", "j1", "running")

    report = story.judge()

    assert report.names() == {FINAL_STATE_CHANGED}
    assert "then running" in report.violations[0].detail


def test_one_key_answered_with_two_jobs_is_named(story: Story) -> None:
    one_finished_job(story)
    story.submit(12, "k1", "j1-other", status=201)
    story.read(13, "k1", "j1-other", "succeeded")

    assert story.judge().names() == {KEY_WITH_MANY_JOBS}


def test_a_pod_alive_at_the_end_is_named_unless_the_task_keeps_it(story: Story) -> None:
    story.task("k")
    story.submit(1, "k", "j")
    story.pod("plane", "j", 0, created=2, running=3)
    story.read(8, "k", "j", "succeeded")
    story.task("kept", on_finish_action="delete_succeeded_pod")
    story.submit(1, "kept", "jk")
    story.pod("plane", "jk", 0, created=2, running=3)
    story.read(8, "kept", "jk", "failed")

    report = story.judge()

    assert report.names() == {POD_LEFT_BEHIND}
    assert [v.job_id for v in report.violations] == ["j"]


def test_a_task_left_queued_while_another_cluster_had_room_is_named(story: Story) -> None:
    story.fault("apiserver_down", 10, 150, cluster="gpu-a100")
    gpu_job(story, "k", "j", "gpu-h100", submitted=20, running=101, ended=110, gpus=2)

    report = story.judge()

    assert report.names() == {SLOW_FAILOVER}
    assert "until 81.0s" in report.violations[0].detail


def test_a_task_waiting_while_the_other_cluster_is_full_is_no_violation(story: Story) -> None:
    story.fault("apiserver_down", 10, 150, cluster="gpu-a100")
    gpu_job(story, "full", "jf", "gpu-h100", 5, 7, 95, gpus=8, eligible=("gpu-h100",))
    gpu_job(story, "k", "j", "gpu-h100", submitted=20, running=101, ended=110, gpus=2)

    assert story.judge().ok


def test_the_history_files_are_json_lines_with_both_clocks(story: Story) -> None:
    one_finished_job(story)
    story.judge()
    first = json.loads((story.folder / "pods.jsonl").read_text().splitlines()[0])
    assert {"t", "mono", "cluster", "event", "pod", "uid", "job_id", "attempt"} <= first.keys()
