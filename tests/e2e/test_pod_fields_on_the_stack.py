"""A task using KubernetesPodOperator's pod fields (env_from, an init container, ports,
security contexts, grace period, token automount, host aliases, DNS, hostname) is
dispatched, and the pod the cluster's API server holds carries each of them."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from dispatcher.client import DispatcherClient
from tests.stack import Stack
from tests.support import task, wait_until

FIELDS: dict[str, Any] = {
    "env_from": [
        {"configMapRef": {"name": "settings"}},
        {"secretRef": {"name": "db", "optional": True}, "prefix": "DB_"},
    ],
    "volumes": [{"name": "work", "emptyDir": {}}],
    "volume_mounts": [{"name": "work", "mountPath": "/work"}],
    "init_containers": [
        {
            "name": "fetch",
            "image": "busybox:1.36",
            "command": ["sh", "-c", "echo ready > /work/flag"],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
        }
    ],
    "ports": [{"containerPort": 8080, "name": "metrics"}],
    "security_context": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000},
    "container_security_context": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "termination_grace_period": 7,
    "automount_service_account_token": False,
    "host_aliases": [{"ip": "10.1.2.3", "hostnames": ["warehouse.internal"]}],
    "dnspolicy": "None",
    "dns_config": {"nameservers": ["10.96.0.10"], "options": [{"name": "ndots", "value": "2"}]},
    "hostname": "trainer-0",
    "subdomain": "trainers",
}


def test_a_task_with_kpo_pod_fields_makes_a_pod_the_api_server_keeps_as_asked(
    stack: Stack, api: DispatcherClient, namespace: str
) -> None:
    # The ConfigMap env_from names must be there (the optional Secret need not be):
    # routing sends the task only where it is.
    for cluster in ("plane", "gpu-a100", "gpu-h100"):
        with stack.kube(cluster) as kube:
            client.CoreV1Api(kube).create_namespaced_config_map(
                namespace, {"metadata": {"name": "settings"}, "data": {"mode": "test"}}
            )
    spec = task("kpo-fields", **FIELDS)
    wait_until(lambda: api.explain(spec)["verdict"] == "place", what="routing to see it")
    job, created = api.submit(spec)
    assert created, job

    def created_pod() -> dict[str, Any] | None:
        current = api.get(job["id"])
        # A pod the API server refused fails the job (launch-refused) with its message.
        assert current["state"] not in ("failed", "rejected"), current
        if not current["pod"] or current["state"] == "queued":
            return None
        with stack.kube(current["cluster"]) as kube:
            found = client.CoreV1Api(kube).list_namespaced_pod(
                current["namespace"], field_selector=f"metadata.name={current['pod']}"
            )
            if not found.items:
                return None
            return dict(client.ApiClient().sanitize_for_serialization(found.items[0]))

    read = wait_until(created_pod, what="the job's pod in its cluster's API server")
    spec, base = read["spec"], read["spec"]["containers"][0]

    assert base["envFrom"] == FIELDS["env_from"]
    assert base["ports"] == [{"containerPort": 8080, "name": "metrics", "protocol": "TCP"}]
    assert base["securityContext"] == FIELDS["container_security_context"]
    [init] = spec["initContainers"]
    assert (init["name"], init["image"], init["command"]) == (
        "fetch",
        "busybox:1.36",
        ["sh", "-c", "echo ready > /work/flag"],
    )
    assert init["volumeMounts"] == [{"name": "work", "mountPath": "/work"}]
    assert init["resources"] == {"requests": {"cpu": "250m", "memory": "64Mi"}}
    assert spec["securityContext"] == FIELDS["security_context"]
    assert spec["terminationGracePeriodSeconds"] == 7
    assert spec["automountServiceAccountToken"] is False
    assert spec["hostAliases"] == FIELDS["host_aliases"]
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"] == FIELDS["dns_config"]
    assert (spec["hostname"], spec["subdomain"]) == ("trainer-0", "trainers")
    api.cancel(job["id"])
