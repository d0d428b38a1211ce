"""KubernetesPodOperator's pod fields (env_from, init containers, ports, security
contexts, grace period, service account token, host aliases, DNS, hostname, runtime
class) carry over into the task spec, are held to the API server's rules with every
problem at its field path, and reach the pod exactly as checked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dispatcher.core import OnFinishAction, Placement, build_pod, parse_task_spec
from dispatcher.errors import SpecError

NOW = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)


def pod_spec(**fields: Any) -> dict[str, Any]:
    task = parse_task_spec({"image": "busybox", "name": "t", **fields})
    pod = build_pod(task, Placement("plane"), job_id="j-1", attempt=0, submitted_at=NOW)
    spec: dict[str, Any] = pod["spec"]
    return spec


def container(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = pod_spec(**fields)["containers"][0]
    return base


def problems(**fields: Any) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_task_spec({"image": "busybox", **fields})
    return {p.field: p.message for p in caught.value.problems}


# ----------------------------------------------------------------------- the manifest


class TestManifest:
    def test_env_from_sources_become_the_containers_env_from(self) -> None:
        got = container(
            env_from=[
                {"configMapRef": {"name": "settings"}},
                {"secret_ref": {"name": "db", "optional": True}, "prefix": "DB_"},
            ]
        )
        assert got["envFrom"] == [
            {"configMapRef": {"name": "settings"}},
            {"prefix": "DB_", "secretRef": {"name": "db", "optional": True}},
        ]

    def test_ports_are_declared_on_the_task_container(self) -> None:
        got = container(ports=[{"container_port": 8080, "name": "http", "protocol": "TCP"}])
        assert got["ports"] == [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]

    def test_container_security_context_is_the_task_containers(self) -> None:
        got = container(
            container_security_context={
                "allow_privilege_escalation": False,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            }
        )
        assert got["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def test_pod_security_context_is_the_pods(self) -> None:
        got = pod_spec(
            security_context={
                "runAsUser": 1000,
                "run_as_group": 3000,
                "fsGroup": 2000,
                "supplementalGroups": [4000],
                "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}],
            }
        )
        assert got["securityContext"] == {
            "fsGroup": 2000,
            "runAsGroup": 3000,
            "runAsUser": 1000,
            "supplementalGroups": [4000],
            "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}],
        }

    def test_init_containers_run_before_the_task_with_the_tasks_volumes(self) -> None:
        got = pod_spec(
            volumes=[{"name": "work", "emptyDir": {}}],
            volume_mounts=[{"name": "work", "mountPath": "/work"}],
            init_containers=[
                {
                    "name": "fetch",
                    "image": "curlimages/curl:8.8.0",
                    "command": ["sh", "-c"],
                    "args": ["curl -o /work/data https://example.com/data"],
                    "env": [{"name": "MODE", "value": "fast"}],
                    "volume_mounts": [{"name": "work", "mount_path": "/work"}],
                    "resources": {"requests": {"cpu": "500m"}},
                    "securityContext": {"runAsNonRoot": True},
                }
            ],
        )
        assert got["initContainers"] == [
            {
                "name": "fetch",
                "image": "curlimages/curl:8.8.0",
                "command": ["sh", "-c"],
                "args": ["curl -o /work/data https://example.com/data"],
                "env": [{"name": "MODE", "value": "fast"}],
                "resources": {"requests": {"cpu": "500m"}},
                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                "securityContext": {"runAsNonRoot": True},
            }
        ]
        assert got["containers"][0]["name"] == "base"

    @pytest.mark.parametrize(
        ("field", "value", "pod_field", "expected"),
        [
            ("termination_grace_period", 5, "terminationGracePeriodSeconds", 5),
            ("termination_grace_period", 0, "terminationGracePeriodSeconds", 0),
            ("automount_service_account_token", False, "automountServiceAccountToken", False),
            (
                "host_aliases",
                [{"ip": "10.0.0.1", "hostnames": ["db.internal"]}, {"ip": "fd00::1"}],
                "hostAliases",
                [{"ip": "10.0.0.1", "hostnames": ["db.internal"]}, {"ip": "fd00::1"}],
            ),
            ("dnspolicy", "Default", "dnsPolicy", "Default"),
            (
                "dns_config",
                {"nameservers": ["1.1.1.1"], "searches": ["ns.svc.cluster.local."]},
                "dnsConfig",
                {"nameservers": ["1.1.1.1"], "searches": ["ns.svc.cluster.local."]},
            ),
            ("hostname", "worker-0", "hostname", "worker-0"),
            ("subdomain", "workers", "subdomain", "workers"),
            ("runtime_class_name", "gvisor", "runtimeClassName", "gvisor"),
        ],
    )
    def test_pod_level_fields_are_carried_over(
        self, field: str, value: Any, pod_field: str, expected: Any
    ) -> None:
        assert pod_spec(**{field: value})[pod_field] == expected

    def test_unset_fields_leave_the_pod_as_before(self) -> None:
        got = pod_spec()
        for absent in (
            "initContainers",
            "securityContext",
            "terminationGracePeriodSeconds",
            "automountServiceAccountToken",
            "hostAliases",
            "dnsPolicy",
            "dnsConfig",
            "hostname",
            "subdomain",
            "runtimeClassName",
        ):
            assert absent not in got
        for absent in ("envFrom", "ports", "securityContext"):
            assert absent not in got["containers"][0]

    def test_delete_active_pod_keeps_finished_pods(self) -> None:
        # KPO deletes only a still-running pod; the dispatcher deletes any pod alive after
        # its job ended, so what remains of delete_active_pod is keep_pod.
        task = parse_task_spec({"image": "busybox", "on_finish_action": "delete_active_pod"})
        assert task.on_finish_action is OnFinishAction.KEEP_POD


# ----------------------------------------------------------------------- routing sizes


class TestInitContainersInRequests:
    def test_the_pod_reserves_the_larger_of_its_containers_and_any_init_container(
        self,
    ) -> None:
        task = parse_task_spec(
            {
                "image": "busybox",
                "container_resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                "init_containers": [
                    {"name": "a", "image": "busybox", "resources": {"requests": {"cpu": "4"}}},
                    {
                        "name": "b",
                        "image": "busybox",
                        "resources": {"limits": {"memory": "8Gi"}},
                    },
                ],
            }
        )
        assert task.requests == {"cpu": 4000, "memory": 8 * 2**30, "pods": 1}

    def test_a_sidecar_runs_alongside_the_task_and_later_init_containers(self) -> None:
        task = parse_task_spec(
            {
                "image": "busybox",
                "container_resources": {"requests": {"cpu": "1"}},
                "init_containers": [
                    {
                        "name": "proxy",
                        "image": "busybox",
                        "restartPolicy": "Always",
                        "resources": {"requests": {"cpu": "500m"}},
                    },
                    {"name": "warm", "image": "busybox", "resources": {"requests": {"cpu": "2"}}},
                ],
            }
        )
        # During "warm": 2 + 0.5 (sidecar); afterwards: 1 + 0.5.
        assert task.requests["cpu"] == 2500


# ----------------------------------------------------------------------- validation


class TestValidation:
    @pytest.mark.parametrize(
        ("fields", "field", "message"),
        [
            (
                {"env_from": [{"prefix": "X_"}]},
                "env_from[0]",
                "needs one of: configMapRef, secretRef",
            ),
            (
                {"env_from": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]},
                "env_from[0].secretRef",
                "not both",
            ),
            (
                {"env_from": [{"configMapRef": {"name": "Bad_Name"}}]},
                "env_from[0].configMapRef.name",
                "RFC 1123",
            ),
            (
                {"env_from": [{"configMapRef": {"name": "a"}, "prefix": "1X"}]},
                "env_from[0].prefix",
                "not a valid variable name prefix",
            ),
            ({"ports": [{"containerPort": 0}]}, "ports[0].containerPort", "greater than"),
            (
                {"ports": [{"containerPort": 80, "name": "http-port-number-1"}]},
                "ports[0].name",
                "at most 15",
            ),
            ({"ports": [{"containerPort": 80, "name": "8080"}]}, "ports[0].name", "letter"),
            (
                {"ports": [{"containerPort": 80, "hostPort": 80}]},
                "ports[0].hostPort",
                "a host port binds a port",
            ),
            (
                {"ports": [{"containerPort": 80, "name": "a"}, {"containerPort": 81, "name": "a"}]},
                "ports[1].name",
                "duplicate 'a'",
            ),
            (
                {"ports": [{"containerPort": 80, "protocol": "HTTP"}]},
                "ports[0].protocol",
                "'TCP', 'UDP' or 'SCTP'",
            ),
            (
                {"security_context": {"runAsUser": -1}},
                "security_context.runAsUser",
                "greater than or equal to 0",
            ),
            (
                {"security_context": {"sysctls": [{"name": "Net.IPv4", "value": "1"}]}},
                "security_context.sysctls[0].name",
                "not a sysctl name",
            ),
            (
                {"security_context": {"seccompProfile": {"type": "Localhost"}}},
                "security_context.seccompProfile.localhostProfile",
                "required when type is Localhost",
            ),
            (
                {"security_context": {"windowsOptions": {"runAsUserName": "x"}}},
                "security_context.windowsOptions",
                "unknown field",
            ),
            (
                {
                    "container_security_context": {
                        "privileged": True,
                        "allowPrivilegeEscalation": False,
                    }
                },
                "container_security_context.allowPrivilegeEscalation",
                "cannot be false when privileged is true",
            ),
            (
                {"container_security_context": {"procMount": "Unmasked"}},
                "container_security_context.procMount",
                "'Default'",
            ),
            (
                {"container_security_context": {"capabilities": {"add": ["NET ADMIN"]}}},
                "container_security_context.capabilities.add[0]",
                "not a capability name",
            ),
            ({"termination_grace_period": -1}, "termination_grace_period", "greater than"),
            (
                {"host_aliases": [{"ip": "10.0.0.300", "hostnames": ["db"]}]},
                "host_aliases[0].ip",
                "not an IP address",
            ),
            (
                {"host_aliases": [{"ip": "10.0.0.1", "hostnames": ["DB_HOST"]}]},
                "host_aliases[0].hostnames[0]",
                "RFC 1123",
            ),
            ({"dnspolicy": "ClusterLast"}, "dnspolicy", "'ClusterFirst'"),
            (
                {"dnspolicy": "None"},
                "dns_config.nameservers",
                "needs at least one nameserver",
            ),
            (
                {"dns_config": {"nameservers": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"]}},
                "dns_config.nameservers",
                "at most 3",
            ),
            (
                {"dns_config": {"searches": ["bad_domain"]}},
                "dns_config.searches[0]",
                "RFC 1123",
            ),
            ({"dns_config": {"options": [{"value": "2"}]}}, "dns_config.options[0].name", ""),
            ({"hostname": "Worker.0"}, "hostname", "RFC 1123"),
            ({"subdomain": "a.b"}, "subdomain", "RFC 1123"),
            ({"runtime_class_name": "gVisor"}, "runtime_class_name", "RFC 1123"),
            (
                {"automount_service_account_token": "maybe"},
                "automount_service_account_token",
                "boolean",
            ),
        ],
    )
    def test_each_field_is_refused_at_its_path(
        self, fields: dict[str, Any], field: str, message: str
    ) -> None:
        found = problems(**fields)
        assert field in found, found
        assert message in found[field]

    @pytest.mark.parametrize(
        ("container", "field", "message"),
        [
            ({"name": "base", "image": "busybox"}, "init_containers[0].name", "task's own"),
            ({"name": "init", "image": "Not An Image"}, "init_containers[0].image", "image"),
            ({"name": "init"}, "init_containers[0].image", "required"),
            (
                {
                    "name": "init",
                    "image": "busybox",
                    "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
                },
                "init_containers[0].volumeMounts[0].name",
                "no volume named 'nope'",
            ),
            (
                {"name": "init", "image": "busybox", "restartPolicy": "OnFailure"},
                "init_containers[0].restartPolicy",
                "'Always'",
            ),
            (
                {"name": "init", "image": "busybox", "livenessProbe": {"exec": {}}},
                "init_containers[0].livenessProbe",
                "unknown field",
            ),
            (
                {"name": "init", "image": "busybox", "resources": {"requests": {"cpu": "lots"}}},
                "init_containers[0].resources.requests.cpu",
                "",
            ),
            (
                {
                    "name": "init",
                    "image": "busybox",
                    "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}],
                },
                "init_containers[0].env[1].name",
                "duplicate 'A'",
            ),
        ],
    )
    def test_init_containers_are_checked_like_the_tasks_container(
        self, container: dict[str, Any], field: str, message: str
    ) -> None:
        found = problems(init_containers=[container])
        assert field in found, found
        assert message in found[field]

    def test_init_container_names_are_unique(self) -> None:
        found = problems(
            init_containers=[
                {"name": "a", "image": "busybox"},
                {"name": "a", "image": "busybox"},
            ]
        )
        assert found == {"init_containers[1].name": "duplicate 'a'"}

    def test_every_problem_is_reported_at_once(self) -> None:
        found = problems(
            ports=[{"containerPort": 70000}],
            hostname="Bad Host",
            init_containers=[
                {
                    "name": "x",
                    "image": "busybox",
                    "volumeMounts": [{"name": "v", "mountPath": "/v"}],
                }
            ],
            dns_config={"nameservers": ["not-an-ip"]},
        )
        assert set(found) == {
            "ports[0].containerPort",
            "hostname",
            "init_containers[0].volumeMounts[0].name",
            "dns_config.nameservers[0]",
        }
