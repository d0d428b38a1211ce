"""The dispatcher end to end, through its HTTP API, on the real stack.

Each test runs ``dispatcher serve`` as a process with its own task namespace (present in
all three clusters) and its own job-record namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from dispatcher.client import ApiClientError, DispatcherClient
from tests.stack import Stack
from tests.support import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    ServiceProcess,
    finish,
    succeed,
    task,
    wait_until,
)


def pods(stack: Stack, cluster: str, namespace: str) -> list[Any]:
    with stack.kube(cluster) as api:
        return list(client.CoreV1Api(api).list_namespaced_pod(namespace).items)


def test_tasks_land_on_the_cluster_their_hardware_needs(api: DispatcherClient) -> None:
    cpu, _ = api.submit(task("prep", annotations=succeed()))
    a100, _ = api.submit(task("train-a100", gpus=2, model="A100", annotations=succeed()))
    h100, _ = api.submit(task("train-h100", gpus=4, model="H100", annotations=succeed()))
    results = {
        name: finish(api, job["id"])
        for name, job in {"cpu": cpu, "a100": a100, "h100": h100}.items()
    }
    assert {k: (v["state"], v["cluster"]) for k, v in results.items()} == {
        "cpu": ("succeeded", "plane"),
        "a100": ("succeeded", "gpu-a100"),
        "h100": ("succeeded", "gpu-h100"),
    }
    assert results["a100"]["running_at"] >= results["a100"]["submitted_at"]


def test_impossible_task_is_rejected_with_its_explanation_and_creates_no_pod(
    stack: Stack, api: DispatcherClient, namespace: str
) -> None:
    job, created = api.submit(task("huge", gpus=16))
    assert created
    assert job["state"] == "rejected"
    assert "largest node has 8" in job["message"]
    for cluster in ("plane", "gpu-a100", "gpu-h100"):
        assert pods(stack, cluster, namespace) == []


def test_invalid_spec_is_refused_whole_with_the_fields_at_fault(api: DispatcherClient) -> None:
    bad = task("bad")
    bad["container_resources"] = {"requests": {"cpu": "lots"}}
    bad["labels"] = {"Not A Label": "x"}
    with pytest.raises(ApiClientError) as refused:
        api.submit(bad)
    assert refused.value.status == 422
    fields = {p["field"] for p in refused.value.problems}
    assert any("container_resources" in f for f in fields)
    assert any("labels" in f for f in fields)
    assert api.jobs() == []


def test_resubmitting_the_same_key_returns_the_same_job_and_one_pod(
    stack: Stack, api: DispatcherClient, namespace: str
) -> None:
    spec = task("once", gpus=1, annotations={})
    first, created_first = api.submit(spec)
    again, created_again = api.submit(spec)
    assert (created_first, created_again) == (True, False)
    assert again["id"] == first["id"]
    wait_until(lambda: api.get(first["id"])["state"] == "running", what="running")
    third, _ = api.submit(spec)
    assert third["id"] == first["id"]
    assert len(pods(stack, "gpu-a100", namespace)) == 1


def test_a_task_waits_for_capacity_then_runs_when_it_frees(
    stack: Stack, service: ServiceProcess, api: DispatcherClient, namespace: str
) -> None:
    only_a100 = {"allowed_clusters": ["gpu-a100"]}
    fillers = [api.submit(task(f"fill{i}", gpus=8, requirements=only_a100))[0] for i in range(4)]
    for job in fillers:
        wait_until(lambda job=job: api.get(job["id"])["state"] == "running", what="fillers running")
    waiting, _ = api.submit(task("waiter", gpus=8, requirements=only_a100, annotations=succeed()))
    # Routed and told to wait: the reason says so while the job stays queued.
    queued = wait_until(
        lambda: (
            (j := api.get(waiting["id"]))["state"] == "queued" and "waiting" in j["reason"] and j
        ),
        what="the waiter routed and waiting",
    )
    oldest = _metrics(service)["dispatcher_queue_oldest_submission_timestamp_seconds"]
    assert oldest == pytest.approx(queued["submitted_at"], abs=0.01)
    api.cancel(fillers[0]["id"])
    done = finish(api, waiting["id"])
    assert (done["state"], done["cluster"]) == ("succeeded", "gpu-a100")


def test_oom_killed_task_fails_with_its_classification(api: DispatcherClient) -> None:
    annotations = {
        "sim.dispatcher.dev/fail-after": "1s",
        "sim.dispatcher.dev/exit-code": "137",
        "sim.dispatcher.dev/reason": "OOMKilled",
    }
    spec = task("oom", gpus=1, annotations=annotations)
    spec["container_resources"]["limits"]["memory"] = "3Gi"
    job = finish(api, api.submit(spec)[0]["id"])
    assert (job["state"], job["failure"], job["exit_code"]) == ("failed", "oom-killed", 137)
    assert "3Gi" in job["message"]


def test_termination_message_json_becomes_the_result(api: DispatcherClient) -> None:
    spec = task("result", annotations=succeed(message='{"accuracy": 0.93, "rows": 1200}'))
    job = finish(api, api.submit(spec)[0]["id"])
    assert job["result"] == {"accuracy": 0.93, "rows": 1200}


def test_cancel_deletes_the_pod_wherever_it_runs(
    stack: Stack, api: DispatcherClient, namespace: str
) -> None:
    job, _ = api.submit(task("long", gpus=2, model="H100"))
    wait_until(lambda: api.get(job["id"])["state"] == "running", what="running")
    assert len(pods(stack, "gpu-h100", namespace)) == 1
    cancelled = api.cancel(job["id"])
    assert cancelled["state"] in ("cancelling", "cancelled")
    wait_until(lambda: pods(stack, "gpu-h100", namespace) == [], what="pod deleted")
    assert finish(api, job["id"])["state"] == "cancelled"


@pytest.mark.parametrize(
    ("action", "fail", "kept"),
    [
        ("delete_pod", False, False),
        ("delete_pod", True, False),
        ("keep_pod", True, True),
        ("delete_succeeded_pod", False, False),
        ("delete_succeeded_pod", True, True),
    ],
)
def test_finished_pods_are_cleaned_up_as_on_finish_action_says(
    stack: Stack, api: DispatcherClient, namespace: str, action: str, fail: bool, kept: bool
) -> None:
    annotations = {"sim.dispatcher.dev/fail-after": "1s"} if fail else succeed()
    job = finish(
        api, api.submit(task("cleanup", annotations=annotations, on_finish_action=action))[0]["id"]
    )
    assert job["state"] == ("failed" if fail else "succeeded")
    if kept:
        # Acknowledging forgets the job, which deletes every pod its policy deletes, and
        # only then its record: once the record is gone, a kept pod has outlived it all.
        api.acknowledge(job["id"])
        wait_until(lambda: not _record_exists(stack, namespace, job["id"]), what="record gone")
        assert len(pods(stack, "plane", namespace)) == 1
    else:
        wait_until(lambda: pods(stack, "plane", namespace) == [], what="pod deleted")


def test_logs_are_readable_and_followable(
    stack: Stack, api: DispatcherClient, namespace: str
) -> None:
    job, _ = api.submit(task("talker", gpus=1))
    wait_until(lambda: api.get(job["id"])["state"] == "running", what="running")
    assert "step 3/3" in list(api.logs(job["id"]))
    marker = f"line {uuid.uuid4().hex}"
    seen: list[str] = []

    def follow() -> None:
        for line in api.logs(job["id"], follow=True):
            seen.append(line)
            if marker in line:
                return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    # The stream is open once it delivered the lines already written.
    wait_until(lambda: any("step 3/3" in line for line in seen), what="follow connected")
    stack.append_container_log("gpu-a100", [marker])
    reader.join(timeout=20)
    assert any(marker in line for line in seen)
    api.cancel(job["id"])


def test_kill_9_and_restart_readopts_every_job_without_duplicates(
    stack: Stack, service_factory: Any, namespace: str
) -> None:
    service: ServiceProcess = service_factory()
    specs = [task(f"r{i}", gpus=1 if i % 2 else 0) for i in range(50)]
    with service.client() as api:
        running = [api.submit(spec)[0] for spec in specs]
        finishing = [api.submit(task(f"f{i}", annotations=succeed("8s")))[0] for i in range(5)]
        wait_until(
            lambda: all(api.get(j["id"])["state"] == "running" for j in running),
            timeout=90,
            what="50 jobs running",
        )
    service.kill9()
    service.start()
    with service.client() as api:
        jobs = {j["id"]: j for j in api.jobs()}
        assert {j["id"] for j in running + finishing} <= jobs.keys()
        assert all(jobs[j["id"]]["state"] == "running" for j in running)
        for job in finishing:
            assert finish(api, job["id"])["state"] == "succeeded"
        # The same idempotency key after the restart is still the same job.
        again, created = api.submit(specs[0])
        assert (again["id"], created) == (running[0]["id"], False)

    def pods_by_job() -> dict[str, int]:
        counts: dict[str, int] = {}
        for cluster in ("plane", "gpu-a100", "gpu-h100"):
            for pod in pods(stack, cluster, namespace):
                job_id = pod.metadata.labels["kube-dispatcher.dev/job-id"]
                counts[job_id] = counts.get(job_id, 0) + 1
        return counts

    # The finished jobs' pods are deleted by their cleanup; every running job has one pod.
    def settled() -> dict[str, int] | None:
        counts = pods_by_job()
        return counts if len(counts) == len(running) else None

    by_job = wait_until(settled, what="finished pods cleaned up")
    assert by_job == {job["id"]: 1 for job in running}


def test_a_running_job_waits_for_its_unreachable_cluster_and_never_runs_twice(
    stack: Stack, service_factory: Any, faults: Any, namespace: str
) -> None:
    service = service_factory()  # the default policy: wait
    with service.client() as api:
        job, _ = api.submit(task("patient", gpus=1, annotations=succeed("6s")))
        wait_until(
            lambda: (j := api.get(job["id"]))["cluster"] == "gpu-a100" and j["state"] == "running",
            what="running on gpu-a100",
        )
        faults.stop_apiserver("gpu-a100")
        waiting = wait_until(
            lambda: (
                (c := _condition(api.get(job["id"]), "ClusterUnreachable"))
                and c["status"] == "True"
                and c
            ),
            timeout=60,
            what="the job says its cluster is unreachable",
        )
        assert "gpu-a100" in waiting["message"]
        faults.start_apiserver("gpu-a100")
        done = finish(api, job["id"], timeout=120)
    # It finished where it ran, as its one and only attempt.
    assert (done["state"], done["cluster"], done["attempts"]) == ("succeeded", "gpu-a100", 1)
    assert _condition(done, "ClusterUnreachable")["status"] == "False"
    for cluster in ("plane", "gpu-h100"):
        assert pods(stack, cluster, namespace) == []


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in job.get("conditions") or [] if c["type"] == kind), None)


def _record_exists(stack: Stack, namespace: str, job_id: str) -> bool:
    with stack.kube("plane") as admin:
        try:
            client.CustomObjectsApi(admin).get_namespaced_custom_object(
                "kube-dispatcher.dev", "v1", namespace, "dispatchjobs", job_id
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
    return True


def test_job_moves_to_another_cluster_when_its_cluster_goes_down_under_the_relaunch_policy(
    stack: Stack, service_factory: Any, faults: Any, namespace: str
) -> None:
    relaunch = {"on_unreachable": {"action": "relaunch", "relaunch_after_seconds": 5}}
    service = service_factory(clusters={"gpu-a100": relaunch})
    with service.client() as api:
        job, _ = api.submit(task("mover", gpus=1, annotations=succeed("4s")))
        wait_until(
            lambda: (j := api.get(job["id"]))["cluster"] == "gpu-a100" and j["state"] == "running",
            what="running on gpu-a100",
        )
        faults.stop_apiserver("gpu-a100")
        moved = wait_until(
            lambda: (j := api.get(job["id"]))["cluster"] == "gpu-h100" and j,
            timeout=60,
            what="moved to gpu-h100",
        )
        assert moved["attempts"] == 2
        assert "gpu-a100" in moved["history"][0]["ended"]
        assert moved["history"][0]["abandoned"] is True
        done = finish(api, job["id"])
        assert (done["state"], done["cluster"]) == ("succeeded", "gpu-h100")
        faults.start_apiserver("gpu-a100")
        # The pod left behind on gpu-a100 is removed once the cluster is back.
        wait_until(
            lambda: pods(stack, "gpu-a100", namespace) == [], timeout=60, what="stale pod removed"
        )
    # The overlap this policy allows is counted, not hidden.
    overlapping = _metrics(service).get(
        'dispatcher_overlapping_attempts_total{cluster="gpu-a100"}', 0.0
    )
    assert overlapping in (0.0, 1.0)


def _metrics(service: ServiceProcess) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in httpx.get(f"{service.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("dispatcher_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_count_what_happened(service: ServiceProcess, api: DispatcherClient) -> None:
    ok = api.submit(task("ok", annotations=succeed()))[0]
    oom = api.submit(
        task(
            "oom",
            annotations={
                "sim.dispatcher.dev/fail-after": "1s",
                "sim.dispatcher.dev/exit-code": "137",
                "sim.dispatcher.dev/reason": "OOMKilled",
            },
        )
    )[0]
    api.submit(task("huge", gpus=64))
    with pytest.raises(ApiClientError):
        api.submit({"image": ""})
    finish(api, ok["id"])
    finish(api, oom["id"])
    values = _metrics(service)
    assert values['dispatcher_submissions_total{outcome="accepted"}'] == 2
    assert values['dispatcher_submissions_total{outcome="rejected"}'] == 1
    assert values['dispatcher_submissions_total{outcome="invalid"}'] == 1
    finished = (
        'dispatcher_jobs_finished_total{cluster="plane",failure_class="",outcome="succeeded"}'
    )
    assert values[finished] == 1
    oomed = "dispatcher_jobs_finished_total" + (
        '{cluster="plane",failure_class="oom-killed",outcome="failed"}'
    )
    assert values[oomed] == 1
    assert values['dispatcher_submit_to_running_seconds_count{cluster="plane"}'] == 2
    for cluster in ("plane", "gpu-a100", "gpu-h100"):
        assert values[f'dispatcher_cluster_up{{cluster="{cluster}"}}'] == 1
    gpus = (
        'dispatcher_cluster_gpus_allocatable{cluster="gpu-a100",gpu_model="NVIDIA-A100-SXM4-80GB"}'
    )
    assert values[gpus] == 32
    assert values['dispatcher_routing_decisions_total{cluster="",verdict="reject"}'] >= 1
    assert values["dispatcher_leader"] == 1


def test_one_replica_leads_and_a_follower_takes_over_after_kill_9(
    stack: Stack, service_factory: Any, namespace: str
) -> None:
    election = {"leader_election": True, "lease_duration_seconds": 4}
    first: ServiceProcess = service_factory(**election)
    wait_until(lambda: _metrics(first)["dispatcher_leader"] == 1, what="first replica leads")
    second: ServiceProcess = service_factory(**election)
    # The leader renews every retry period; two renewals after the second replica is up,
    # it has had a full round to try (and fail) to take the Lease.
    _wait_for_renewals(stack, namespace, 2)
    assert _metrics(second)["dispatcher_leader"] == 0
    # The follower sends job operations to the leader: 503 with Retry-After.
    refused = httpx.post(f"{second.url}/v1/jobs", json=task("x"), headers=ADMIN_HEADERS, timeout=10)
    assert refused.status_code == 503
    assert refused.headers["retry-after"]
    assert (
        httpx.get(f"{second.url}/v1/clusters", headers=ADMIN_HEADERS, timeout=10).status_code == 200
    )
    with first.client() as api:
        job, _ = api.submit(task("survivor", gpus=1))
        wait_until(lambda: api.get(job["id"])["state"] == "running", what="running")
    first.kill9()
    with second.client(retries=0) as api:
        taken_over = wait_until(
            lambda: _metrics(second)["dispatcher_leader"] == 1, timeout=30, what="takeover"
        )
        assert taken_over
        assert api.get(job["id"])["state"] == "running"
    assert len(pods(stack, "gpu-a100", namespace)) == 1


def test_job_moves_when_its_pod_stays_unschedulable_past_the_timeout(
    stack: Stack, api: DispatcherClient, namespace: str
) -> None:
    # Routing does not judge inter-pod anti-affinity (the scheduler does): a pod that
    # repels the blockers on every gpu-a100 node is placed there, stays Pending, and must
    # move to gpu-h100 once its schedule timeout passes.
    with stack.kube("gpu-a100") as admin:
        core = client.CoreV1Api(admin)
        for node in stack.env().clusters["gpu-a100"].nodes:
            core.create_namespaced_pod(
                namespace,
                {
                    "metadata": {"name": f"blocker-{node}", "labels": {"blocker": "yes"}},
                    "spec": {
                        "nodeName": node,
                        "containers": [{"name": "c", "image": "pause"}],
                        "tolerations": [{"operator": "Exists"}],
                    },
                },
            )
    repel = {
        "pod_anti_affinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {"blocker": "yes"}},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }
    spec = task("picky", gpus=1, affinity=repel, schedule_timeout_seconds=3, annotations=succeed())
    job, _ = api.submit(spec)
    done = finish(api, job["id"], timeout=90)
    assert (done["state"], done["cluster"], done["attempts"]) == ("succeeded", "gpu-h100", 2)
    assert done["history"][0]["cluster"] == "gpu-a100"
    assert "unschedulable" in done["history"][0]["ended"]
    assert [p.metadata.name for p in pods(stack, "gpu-a100", namespace)] == [
        f"blocker-{n}" for n in sorted(stack.env().clusters["gpu-a100"].nodes)
    ]


def test_a_finished_outcome_survives_a_restart_until_acknowledged(
    service_factory: Any, stack: Stack, namespace: str
) -> None:
    service: ServiceProcess = service_factory()
    with service.client() as api:
        job = finish(api, api.submit(task("short", annotations=succeed("1s", '{"n": 7}')))[0]["id"])
        assert job["state"] == "succeeded"
        wait_until(lambda: pods(stack, "plane", namespace) == [], what="pod cleaned up")
    service.kill9()
    service.start()
    with service.client() as api:
        again = api.get(job["id"])
        assert (again["state"], again["result"], again["cluster"]) == (
            "succeeded",
            {"n": 7},
            "plane",
        )
        api.acknowledge(job["id"])
        with pytest.raises(ApiClientError) as gone:
            api.get(job["id"])
        assert gone.value.status == 404


def test_cli_submits_and_shows_jobs_and_clusters(service: ServiceProcess, tmp_path: Any) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task("cli", gpus=2, model="H100", annotations=succeed())))
    env = {
        "DISPATCHER_URL": service.url,
        "DISPATCHER_TOKEN": ADMIN_TOKEN,
        "COLUMNS": "200",
        "PATH": "/usr/bin:/bin",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatcher.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    submitted = cli("submit", str(path), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    assert "succeeded" in submitted.stdout
    assert "gpu-h100" in submitted.stdout
    status = cli("status", "--state", "succeeded", "-o", "json")
    assert [j["name"] for j in json.loads(status.stdout)] == ["cli"]
    clusters = cli("clusters")
    assert "NVIDIA-A100-SXM4-80GB" in clusters.stdout
    assert "gpu-h100" in clusters.stdout
    missing = cli("status", "j0000000000")
    assert missing.returncode == 1
    assert "no job" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_cleaned_up_pod_lingers_for_its_log_until_acknowledged(
    stack: Stack, service_factory: Any, namespace: str
) -> None:
    service: ServiceProcess = service_factory(finished_pod_linger_seconds=300)
    with service.client() as api:
        job = finish(api, api.submit(task("brief", annotations=succeed("1s")))[0]["id"])
        assert "step 3/3" in list(api.logs(job["id"]))
        assert len(pods(stack, "plane", namespace)) == 1
        api.acknowledge(job["id"])
        wait_until(lambda: pods(stack, "plane", namespace) == [], timeout=15, what="deleted")
        with pytest.raises(ApiClientError) as gone:
            list(api.logs(job["id"]))
        assert gone.value.status == 404


def _wait_for_renewals(stack: Stack, namespace: str, count: int) -> None:
    def renew_time() -> str:
        with stack.kube("plane") as admin:
            lease = client.CoordinationV1Api(admin).read_namespaced_lease(
                "kube-dispatcher", namespace
            )
        return str(lease.spec.renew_time)

    seen = [renew_time()]
    wait_until(
        lambda: (
            (now := renew_time()) != seen[-1] and seen.append(now) is None and len(seen) > count
        ),
        timeout=30,
        what=f"{count} lease renewals",
    )


def test_a_pod_deleted_while_the_dispatcher_was_down_fails_its_job_and_is_never_run_twice(
    stack: Stack, service_factory: Any, namespace: str
) -> None:
    service: ServiceProcess = service_factory()
    with service.client() as api:
        job, _ = api.submit(task("orphan", gpus=1))
        running = wait_until(
            lambda: (j := api.get(job["id"]))["state"] == "running" and j, what="running"
        )
    service.kill9()
    with stack.kube("gpu-a100") as admin:
        client.CoreV1Api(admin).delete_namespaced_pod(running["pod"], namespace)
    wait_until(lambda: pods(stack, "gpu-a100", namespace) == [], what="pod deleted")
    service.start()
    with service.client() as api:
        done = finish(api, job["id"])
    # Its record said running: it may have run to the end. Failing it (Airflow retries by
    # its own policy) is honest; launching it again could run it twice.
    assert (done["state"], done["failure"], done["attempts"]) == ("failed", "node-lost", 1)
    assert running["pod"] in done["message"]
    assert pods(stack, "gpu-a100", namespace) == []
