"""Bad input is refused whole at submission, and good input makes pods Kubernetes accepts.

- Every spec the dispatcher accepts (generated with every Kubernetes-shaped field it passes
  through, camelCase and snake_case, and half the time with one piece the API server
  refuses put in) builds a pod that the kubernetes client and a real API server accept: a
  server-side dry-run create (``dryRun=All``, strict field validation) on ``plane``.
- Each of those refused pieces is refused by the dispatcher and, put into a pod by hand,
  by the API server: the refusals are the API server's own.
- A malformed task (a ``podAffinity`` term without ``topologyKey``, which once made the
  dispatch cycle fail and left the job pending forever) is answered 422 with every field at
  fault, and no pod appears in any cluster, as an admin listing of every cluster shows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dispatcher.client import ApiClientError, DispatcherClient
from dispatcher.core import (
    JOB_ID_LABEL,
    Placement,
    PodDefaults,
    build_pod,
    managed_pods_selector,
    parse_task_spec,
)
from dispatcher.errors import SpecError
from tests.stack import Stack
from tests.support import task, wait_until
from tests.unit.spec_strategies import REFUSED_PIECES, near_misses, task_specs

CLUSTERS = ("plane", "gpu-a100", "gpu-h100")


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    # One namespace serves every example: a dry run creates nothing in it.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=st.one_of(task_specs(), near_misses()))
def test_every_accepted_spec_makes_a_pod_the_api_server_accepts(
    stack: Stack, namespace: str, document: dict[str, Any]
) -> None:
    try:
        spec = parse_task_spec(document)
    except SpecError:
        reject()  # refused whole: nothing to create (see the next test)
    pod = build_pod(
        spec,
        Placement("plane", PodDefaults(namespace=namespace)),
        job_id="j-dryrun",
        attempt=0,
        submitted_at=datetime.now(UTC),
    )
    with stack.kube("plane") as api:
        try:
            client.CoreV1Api(api).create_namespaced_pod(
                namespace, pod, dry_run="All", field_validation="Strict"
            )
        except ApiException as exc:
            pytest.fail(
                f"the API server refused an accepted spec ({exc.status}): {exc.body}\n"
                f"spec: {json.dumps(document)}\npod: {json.dumps(pod)}"
            )
        except ValueError as exc:  # the kubernetes client's own model refused the body
            pytest.fail(
                f"the kubernetes client refused an accepted spec: {exc}\n"
                f"spec: {json.dumps(document)}\npod: {json.dumps(pod)}"
            )


def _with_piece(pod: dict[str, Any], field: str, piece: Any) -> dict[str, Any]:
    """``pod`` with a task spec field's raw ``piece`` written where the pod carries it."""
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    if field == "tolerations":
        spec.setdefault("tolerations", []).append(piece)
    elif field == "affinity":
        spec["affinity"] = piece
    elif field == "volumes":
        spec.setdefault("volumes", []).append(piece)
    elif field == "volume_mounts":
        spec.setdefault("volumes", []).append({"name": "x-mounted", "emptyDir": {}})
        container.setdefault("volumeMounts", []).append(piece)
    elif field == "env_vars":
        container.setdefault("env", []).append(piece)
    elif field == "container_resources":
        container["resources"] = piece
    else:
        pod["metadata"][field].update(piece)
    return pod


@pytest.mark.parametrize(("field", "piece"), REFUSED_PIECES, ids=lambda v: str(v)[:40])
def test_each_refused_piece_is_refused_by_the_api_server_too(
    stack: Stack, namespace: str, field: str, piece: Any
) -> None:
    document: dict[str, Any] = {"image": "busybox"}
    if piece.get("name") != "x-nosa":
        document["service_account_name"] = "runner"
    if field == "volume_mounts":
        document["volumes"] = [{"name": "x-mounted", "emptyDir": {}}]
    many = field in ("tolerations", "volumes", "volume_mounts", "env_vars")
    document[field] = [piece] if many else piece
    with pytest.raises(SpecError):
        parse_task_spec(document)
    pod = build_pod(
        parse_task_spec({"image": "busybox"}),
        Placement("plane", PodDefaults(namespace=namespace)),
        job_id="j-refused",
        attempt=0,
        submitted_at=datetime.now(UTC),
    )
    with stack.kube("plane") as api, pytest.raises((ApiException, ValueError)) as refused:
        client.CoreV1Api(api).create_namespaced_pod(
            namespace, _with_piece(pod, field, piece), dry_run="All", field_validation="Strict"
        )
    if isinstance(refused.value, ApiException):
        assert refused.value.status == 422, refused.value.body


def _managed_pods(stack: Stack) -> dict[str, set[str]]:
    """Every pod the dispatcher made, in every namespace of every cluster: job id per cluster."""
    found: dict[str, set[str]] = {}
    for cluster in CLUSTERS:
        with stack.kube(cluster) as api:
            pods = client.CoreV1Api(api).list_pod_for_all_namespaces(
                label_selector=managed_pods_selector()
            )
        found[cluster] = {p.metadata.labels.get(JOB_ID_LABEL, "") for p in pods.items}
    return found


def test_a_malformed_pod_affinity_is_refused_with_its_path_and_creates_no_pod(
    stack: Stack, api: DispatcherClient
) -> None:
    bad = task(
        "bad-affinity",
        gpus=1,
        affinity={
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}}
                ]
            }
        },
        tolerations=[{"key": "spot", "operator": "exists"}],
        volumes=[{"name": "scratch", "emptyDir": {}, "hostPath": {"path": "/tmp"}}],
    )
    with pytest.raises(ApiClientError) as refused:
        api.submit(bad)
    assert refused.value.status == 422
    problems = {p["field"]: p["message"] for p in refused.value.problems}
    assert problems == {
        "affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey": (
            "field required"
        ),
        "tolerations[0].operator": problems["tolerations[0].operator"],
        "volumes[0].hostPath": problems["volumes[0].hostPath"],
    }
    # The client's message names each problem once, whether or not the detail lists it.
    for field in problems:
        assert str(refused.value).count(f"  {field}: ") == 1, str(refused.value)
    # Nothing half-made: a task submitted after the refused one runs, and when its pod
    # exists, it is the only pod the dispatcher made anywhere.
    good, _ = api.submit(task("after-the-refusal", gpus=1))
    wait_until(
        lambda: good["id"] in set().union(*_managed_pods(stack).values()),
        what="the accepted task's pod",
    )
    assert set().union(*_managed_pods(stack).values()) == {good["id"]}
    assert [job["id"] for job in api.jobs()] == [good["id"]]
