"""Job records: what the record stores promise the dispatcher.

The contract tests run on both stores (``kit``: ``MemoryRecords``, and ``KubernetesRecords``
on the stack's `plane` as the dispatcher's own ServiceAccount); the rest are about how the
Kubernetes store keeps records (DispatchJob objects, Secrets of literal env values, the
fencing policy of the API server), checked by reading with the admin client.
"""

from __future__ import annotations

import base64
import json
import math
import ssl
import threading
import uuid
from typing import Any

import httpx
import pytest
from kubernetes import client

from dispatcher.clusters.connection import Connection
from dispatcher.dispatching.records import (
    ENV_MISSING,
    GROUP,
    INCOMPLETE,
    PLURAL,
    VERSION,
    Fence,
    KubernetesRecords,
    Stored,
    env_secret_name,
)
from dispatcher.errors import ApiError, ClusterUnavailable, Fenced, StaleRecord, StoreError
from dispatcher.metrics import REGISTRY
from tests.clusters.provider import KubeconfigProvider
from tests.stack import StackEnv

from .kits import Kit, KubernetesKit

#: Leader election off: no Lease, every write allowed (but terms still never decrease).
OFF = Fence("", 0)


def job_record(job_id: str | None = None, *, secret: str | None = None) -> dict[str, Any]:
    """A record with every shape the dispatcher writes: literal and referenced env values,
    nulls, nested objects, integral and fractional floats, unicode, Kubernetes conditions."""
    job_id = job_id or f"j{uuid.uuid4().hex[:20]}"
    return {
        "id": job_id,
        "spec": {
            "image": "ghcr.io/example/train:1.2",
            "name": "train-resnet",
            "cmds": ["python", "-m", "train"],
            "arguments": ["--epochs", "3", "--lr=0.1"],
            "env_vars": [
                {"name": "API_TOKEN", "value": secret or f"literal-{uuid.uuid4().hex}"},
                {
                    "name": "DB_PASSWORD",
                    "value_from": {"secretKeyRef": {"name": "db", "key": "password"}},
                },
                {"name": "EMPTY", "value": ""},
            ],
            "labels": {"team": "vision"},
            "container_resources": {"limits": {"nvidia.com/gpu": "2", "memory": "16Gi"}},
            "requirements": {"gpus": 2, "gpu_model": "a100", "max_cost_per_hour": 12.5},
            "affinity": None,
        },
        "idempotency_key": f"dag-run-42/train/{job_id}",
        "submitted_at": 1767225600.25,
        "state": "running",
        "message": "running on gpu-a100",
        "attempt": {
            "number": 2,
            "cluster": "gpu-a100",
            "pod": f"{job_id}-2",
            "namespace": "dispatch",
            "created_at": 1767225610.5,
            "ended": None,
        },
        "history": [
            {
                "number": 1,
                "cluster": "gpu-h100",
                "pod": f"{job_id}-1",
                "namespace": "dispatch",
                "created_at": 1767225601.0,
                "ended": "moved: cluster unreachable",
            }
        ],
        "excluded": ["gpu-h100"],
        "failure": None,
        "exit_code": None,
        "result": {"accuracy": 0.93, "notes": "ünïcødé ✓", "nested": [1, 2.5, True, None, {}]},
        "conditions": [
            {
                "type": "Scheduled",
                "status": "True",
                "reason": "Routed",
                "message": "gpu-a100 has 8 free A100s",
                "lastTransitionTime": "2026-01-01T00:00:10Z",
            }
        ],
        "scheduled_at": 1767225601.0,
    }


def moved_on(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**record, **changes}


# ----- the contract, on both stores ------------------------------------------------------------
def test_a_record_reads_back_exactly_as_written(kit: Kit) -> None:
    record = job_record()
    version = kit.store.create(record, OFF)
    stored = kit.store.get(record["id"])
    assert stored == Stored(record, version)
    assert isinstance(stored.record["submitted_at"], float)
    assert [s for s in kit.store.list() if s.record["id"] == record["id"]] == [stored]


def test_records_read_are_copies(kit: Kit) -> None:
    record = job_record()
    kit.store.create(record, OFF)
    stored = kit.store.get(record["id"])
    assert stored is not None
    stored.record["spec"]["image"] = "changed"
    stored.record["history"].clear()
    again = kit.store.get(record["id"])
    assert again is not None
    assert again.record == record


def test_creating_a_job_that_exists_is_stale_and_changes_nothing(kit: Kit) -> None:
    record = job_record()
    version = kit.store.create(record, OFF)
    before = kit.observe(record["id"])
    with pytest.raises(StaleRecord):
        kit.store.create(job_record(record["id"]), OFF)
    assert kit.observe(record["id"]) == before
    assert kit.store.get(record["id"]) == Stored(record, version)


def test_an_update_at_the_version_read_wins_and_one_at_an_older_version_is_stale(
    kit: Kit,
) -> None:
    record = job_record()
    first = kit.store.create(record, OFF)
    finished = moved_on(record, state="succeeded", message="exit 0", exit_code=0)
    second = kit.store.update(finished, first, OFF)
    assert second != first
    assert kit.store.get(record["id"]) == Stored(finished, second)
    before = kit.observe(record["id"])
    with pytest.raises(StaleRecord):
        kit.store.update(moved_on(record, state="failed"), first, OFF)
    assert kit.observe(record["id"]) == before
    assert kit.store.get(record["id"]) == Stored(finished, second)


def test_an_update_that_changes_the_spec_keeps_the_new_spec(kit: Kit) -> None:
    record = job_record()
    version = kit.store.create(record, OFF)
    spec = {**record["spec"], "image": "ghcr.io/example/train:1.3"}
    spec["env_vars"] = [{**spec["env_vars"][0], "value": "rotated"}, *spec["env_vars"][1:]]
    changed = moved_on(record, spec=spec, state="queued")
    version = kit.store.update(changed, version, OFF)
    assert kit.store.get(record["id"]) == Stored(changed, version)


def test_of_writers_racing_at_the_same_version_exactly_one_wins(kit: Kit) -> None:
    record = job_record()
    version = kit.store.create(record, OFF)
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def write(n: int) -> None:
        start.wait()
        try:
            kit.store.update(moved_on(record, message=f"writer {n}"), version, OFF)
            outcome = f"won {n}"
        except StaleRecord:
            outcome = "stale"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1, outcomes
    assert outcomes.count("stale") == 4
    stored = kit.store.get(record["id"])
    assert stored is not None
    assert stored.record["message"] == f"writer {winners[0].split()[1]}"


def test_updating_a_record_that_is_gone_is_stale(kit: Kit) -> None:
    record = job_record()
    version = kit.store.create(record, OFF)
    kit.store.delete(record["id"], OFF)
    with pytest.raises(StaleRecord):
        kit.store.update(moved_on(record, state="failed"), version, OFF)
    assert kit.store.get(record["id"]) is None
    with pytest.raises(StaleRecord):
        kit.store.update(job_record(), version, OFF)


def test_a_deposed_leader_can_change_nothing(kit: Kit) -> None:
    old = kit.elect("replica-a", 1)
    record = job_record()
    version = kit.store.create(record, old)
    new = kit.elect("replica-b", 2)
    before = kit.observe(record["id"])
    with pytest.raises(Fenced):
        kit.store.update(moved_on(record, state="failed"), version, old)
    with pytest.raises(Fenced):
        kit.store.delete(record["id"], old)
    other = job_record()
    with pytest.raises(Fenced):
        kit.store.create(other, old)
    assert kit.observe(record["id"]) == before
    assert kit.observe(other["id"]) is None
    # The new leader writes as usual.
    cancelled = moved_on(record, state="cancelled")
    newer = kit.store.update(cancelled, version, new)
    assert kit.store.get(record["id"]) == Stored(cancelled, newer)
    kit.store.delete(record["id"], new, newer)
    assert kit.store.get(record["id"]) is None


def test_a_leader_that_lost_and_regained_the_lease_writes_only_with_its_new_term(
    kit: Kit,
) -> None:
    first = kit.elect("replica-a", 1)
    record = job_record()
    version = kit.store.create(record, first)
    kit.elect("replica-b", 2)
    again = kit.elect("replica-a", 3)
    before = kit.observe(record["id"])
    with pytest.raises(Fenced):
        kit.store.update(moved_on(record, state="failed"), version, first)
    assert kit.observe(record["id"]) == before
    kit.store.update(moved_on(record, state="succeeded"), version, again)


def test_a_fence_term_never_decreases(kit: Kit) -> None:
    record = job_record()
    version = kit.store.create(record, Fence("replica-a", 3))
    before = kit.observe(record["id"])
    with pytest.raises(Fenced):
        kit.store.update(moved_on(record, state="failed"), version, Fence("replica-a", 2))
    assert kit.observe(record["id"]) == before
    version = kit.store.update(moved_on(record, state="pending"), version, Fence("replica-a", 3))
    version = kit.store.update(moved_on(record, state="running"), version, Fence("replica-b", 4))
    with pytest.raises(Fenced):
        kit.store.delete(record["id"], Fence("replica-a", 3), version)
    kit.store.delete(record["id"], Fence("replica-b", 4), version)
    assert kit.store.get(record["id"]) is None


def test_delete_removes_the_record_once_and_refuses_an_older_version(kit: Kit) -> None:
    kit.store.delete("j-never-written", OFF)
    record = job_record()
    first = kit.store.create(record, OFF)
    second = kit.store.update(moved_on(record, state="succeeded"), first, OFF)
    with pytest.raises(StaleRecord):
        kit.store.delete(record["id"], OFF, first)
    assert kit.store.get(record["id"]) is not None
    kit.store.delete(record["id"], OFF, second)
    assert kit.store.get(record["id"]) is None
    assert kit.observe(record["id"]) is None
    kit.store.delete(record["id"], OFF)


def test_list_returns_every_record_once_at_its_version(kit: Kit) -> None:
    records = [job_record(f"j{n:02d}-{uuid.uuid4().hex[:8]}") for n in range(7)]
    for record in records:
        kit.store.create(record, OFF)
    listed = kit.store.list()
    assert sorted((s.record for s in listed), key=lambda r: r["id"]) == records
    for stored in listed:
        assert kit.store.get(stored.record["id"]) == stored


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"id": "J_Upper", "spec": {}}, "RFC 1123"),
        ({"id": "j1", "spec": "busybox"}, "spec must be a JSON object"),
        ({"id": "j1", "spec": {}, "fence": {}}, "reserved"),
        ({"id": "j1", "spec": {"env_vars": {"A": "b"}}}, "env_vars must be a list"),
        ({"id": "j1", "spec": {}, "submitted_at": math.nan}, "not JSON"),
    ],
    ids=["id-not-a-name", "spec-not-an-object", "reserved-key", "env-as-mapping", "nan"],
)
def test_a_record_the_store_cannot_keep_faithfully_is_refused_before_any_write(
    kit: Kit, record: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        kit.store.create(record, OFF)
    assert kit.store.list() == []


# ----- how the Kubernetes store keeps them ------------------------------------------------
def test_writes_without_the_leaders_fence_are_refused_by_the_api_server_itself(
    kube_kit: KubernetesKit,
) -> None:
    """Not the client: the admin (system:masters) writing the status with a stranger's
    fence is refused too, with the policy's message."""
    leader = kube_kit.elect("replica-a", 1)
    record = job_record()
    kube_kit.store.create(record, leader)
    obj = kube_kit.raw(record["id"])
    assert obj is not None
    obj["status"]["fence"] = {"holder": "intruder", "term": 1}
    objects = client.CustomObjectsApi(kube_kit.admin)
    with pytest.raises(client.ApiException) as refused:
        objects.replace_namespaced_custom_object_status(
            GROUP, VERSION, kube_kit.namespace, PLURAL, record["id"], obj
        )
    assert refused.value.status == 403
    assert "ValidatingAdmissionPolicy" in str(refused.value.body)
    assert "written by intruder term 1, the Lease names replica-a term 1" in str(refused.value.body)


def test_fencing_follows_a_lease_change_within_seconds(
    kube_kit: KubernetesKit, request: pytest.FixtureRequest
) -> None:
    """Each ``elect`` fails unless the policy follows the new Lease within the limit."""
    for term, holder in enumerate(["replica-a", "replica-b", "replica-c", "replica-a"], 1):
        kube_kit.elect(holder, term)
    request.node.user_properties.append(("policy_lag_seconds", kube_kit.lags))
    assert len(kube_kit.lags) == 4


def test_literal_env_values_are_kept_in_a_secret_never_in_the_record(
    kube_kit: KubernetesKit,
) -> None:
    marker = f"literal-{uuid.uuid4().hex}"
    record = job_record(secret=marker)
    kube_kit.store.create(record, OFF)
    raw = kube_kit.raw(record["id"])
    assert raw is not None
    assert marker not in json.dumps(raw)
    env = raw["spec"]["task"]["env_vars"]
    assert [sorted(e) for e in env] == [["name"], ["name", "value_from"], ["name"]]
    assert raw["spec"]["envSecret"] == env_secret_name(record["id"])
    secret = kube_kit.secret(env_secret_name(record["id"]))
    assert secret is not None
    assert secret.metadata.labels["kube-dispatcher.dev/job-id"] == record["id"]
    assert marker in base64.b64decode(secret.data["values.json"]).decode()
    stored = kube_kit.store.get(record["id"])
    assert stored is not None
    assert stored.record == record


def test_a_record_whose_env_secret_is_gone_says_so_without_the_values(
    kube_kit: KubernetesKit,
) -> None:
    record = job_record()
    kube_kit.store.create(record, OFF)
    client.CoreV1Api(kube_kit.admin).delete_namespaced_secret(
        env_secret_name(record["id"]), kube_kit.namespace
    )
    for stored in [kube_kit.store.get(record["id"]), *kube_kit.store.list()]:
        assert stored is not None
        assert stored.record[ENV_MISSING] is True
        names_with_values = [e["name"] for e in stored.record["spec"]["env_vars"] if "value" in e]
        assert names_with_values == []
        assert {k: v for k, v in stored.record.items() if k not in {ENV_MISSING, "spec"}} == {
            k: v for k, v in record.items() if k != "spec"
        }


def test_deleting_a_record_deletes_its_env_secret(kube_kit: KubernetesKit) -> None:
    record = job_record()
    kube_kit.store.create(record, OFF)
    assert kube_kit.secret(env_secret_name(record["id"])) is not None
    kube_kit.store.delete(record["id"], OFF)
    assert kube_kit.raw(record["id"]) is None
    assert kube_kit.secret(env_secret_name(record["id"])) is None


def test_a_refused_create_leaves_no_secret_behind(kube_kit: KubernetesKit) -> None:
    old = kube_kit.elect("replica-a", 1)
    kube_kit.elect("replica-b", 2)
    record = job_record()
    with pytest.raises(Fenced):
        kube_kit.store.create(record, old)
    assert kube_kit.raw(record["id"]) is None
    assert kube_kit.secret(env_secret_name(record["id"])) is None


def test_list_reads_page_by_page(kube_kit: KubernetesKit) -> None:
    """7 records and their 7 Secrets, pages of 3: three pages of each."""
    for n in range(7):
        kube_kit.store.create(job_record(f"j{n:02d}-{uuid.uuid4().hex[:8]}"), OFF)
    before = _requests("list")
    assert len(kube_kit.store.list()) == 7
    assert _requests("list") - before == 6


class ExpiringOnce:
    """The real connection, except that the first continued list page answers 410 Expired,
    as the API server does when the page token's revision has been compacted (which the
    stack's API server, serving pages from its watch cache, does not reproduce on demand)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.lists = 0
        self.expired = False

    def request(self, verb: str, what: str, call: Any, **kwargs: Any) -> dict[str, Any]:
        if verb == "list":
            self.lists += 1
            if self.lists == 2 and not self.expired:
                self.expired = True
                raise ApiError(f"{what}: HTTP 410 Expired", cluster="plane", status=410)
        return self.connection.request(verb, what, call, **kwargs)


def test_a_list_whose_page_token_expired_starts_over(
    kube_kit: KubernetesKit, plane_connection: Connection
) -> None:
    records = [job_record(f"j{n:02d}-{uuid.uuid4().hex[:8]}") for n in range(7)]
    for record in records:
        kube_kit.store.create(record, OFF)
    expiring = ExpiringOnce(plane_connection)
    store = KubernetesRecords(expiring, kube_kit.namespace, page_size=3)  # type: ignore[arg-type]
    listed = store.list()
    assert expiring.expired
    assert sorted((s.record for s in listed), key=lambda r: r["id"]) == records
    # 1 page, the expired one, 3 pages again; then 3 pages of Secrets.
    assert expiring.lists == 8


def _requests(verb: str, code: str = "200") -> float:
    labels = {"cluster": "plane", "verb": verb, "code": code}
    return REGISTRY.get_sample_value("dispatcher_kube_api_requests_total", labels) or 0


def test_a_create_is_three_requests_and_a_status_update_one(kube_kit: KubernetesKit) -> None:
    """Creating: the Secret and the object (201 each), then its status; updating: the status."""
    record = job_record()
    created, updated = _requests("create", "201"), _requests("update")
    version = kube_kit.store.create(record, OFF)
    assert (_requests("create", "201") - created, _requests("update") - updated) == (2, 1)
    updated = _requests("update")
    for state in ("pending", "running", "succeeded"):
        version = kube_kit.store.update(moved_on(record, state=state), version, OFF)
    assert _requests("update") - updated == 3


def test_kubectl_get_shows_state_cluster_attempt_age_and_message(
    kube_kit: KubernetesKit, stack_env: StackEnv
) -> None:
    record = job_record()
    kube_kit.store.create(record, OFF)
    plane = stack_env.clusters["plane"]
    # What `kubectl get dispatchjobs` asks for: the server renders the printer columns.
    response = httpx.get(
        f"{plane.server}/apis/{GROUP}/{VERSION}/namespaces/{kube_kit.namespace}/{PLURAL}",
        headers={
            "Authorization": f"Bearer {plane.admin_token}",
            "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io",
        },
        verify=ssl.create_default_context(cafile=plane.ca_file),
        timeout=10,
    )
    response.raise_for_status()
    table = response.json()
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name", "State", "Cluster", "Attempt", "Age", "Message"]
    (row,) = table["rows"]
    name, state, cluster, attempt, age, message = row["cells"]
    assert (name, state, cluster, attempt, message) == (
        record["id"],
        "running",
        "gpu-a100",
        2,
        "running on gpu-a100",
    )
    assert age.endswith("s")


def test_a_record_without_status_reads_back_as_incomplete(kube_kit: KubernetesKit) -> None:
    job_id = f"j{uuid.uuid4().hex[:20]}"
    client.CustomObjectsApi(kube_kit.admin).create_namespaced_custom_object(
        GROUP,
        VERSION,
        kube_kit.namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DispatchJob",
            "metadata": {"name": job_id},
            "spec": {
                "id": job_id,
                "task": {"image": "busybox"},
                "fence": {"holder": "", "term": 0},
            },
        },
    )
    stored = kube_kit.store.get(job_id)
    assert stored is not None
    assert stored.record == {"id": job_id, "spec": {"image": "busybox"}, INCOMPLETE: True}


def test_an_unreachable_store_raises_a_store_error_with_the_cause(
    kube_kit: KubernetesKit, provider: KubeconfigProvider
) -> None:
    provider.host_override["plane"] = "https://127.0.0.1:9"
    provider.reset("plane")
    store = KubernetesRecords(Connection("plane", provider), kube_kit.namespace)
    for attempt in (
        lambda: store.create(job_record(), OFF),
        lambda: store.get("j0"),
        store.list,
    ):
        with pytest.raises(StoreError) as failed:
            attempt()
        assert type(failed.value) is StoreError
        assert isinstance(failed.value.__cause__, ClusterUnavailable)
