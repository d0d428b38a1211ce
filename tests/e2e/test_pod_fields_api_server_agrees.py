"""The API server agrees with the dispatcher on KubernetesPodOperator's pod fields.

- Every spec the dispatcher accepts with generated env_from, init containers, ports,
  security contexts, grace periods, host aliases, DNS settings and hostnames (camelCase
  and snake_case) builds a pod that a real API server accepts: a server-side dry-run
  create (``dryRun=All``, strict field validation) on ``plane``, in a namespace enforcing
  the baseline Pod Security Standard; exactly those the dispatcher's own baseline check
  refuses (privileged, added capabilities, Unconfined profiles) are refused there too.
- Each piece the dispatcher refuses for a reason the API server shares is refused by the
  API server too, when put into a pod by hand.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dispatcher.core import Placement, PodDefaults, build_pod, parse_task_spec
from dispatcher.core.podsecurity import Level, violations
from dispatcher.errors import SpecError
from tests.stack import Stack
from tests.unit.spec_strategies import (
    _env_names,
    _maybe,
    _object,
    container_resources,
    dns_labels,
    dns_subdomains,
    env_vars,
    images,
)

Json = dict[str, Any]
_ids = st.integers(min_value=0, max_value=2**31 - 1)
_port_names = st.from_regex(r"[a-z]([a-z0-9]|-(?=[a-z0-9])){0,13}[a-z0-9]?", fullmatch=True).filter(
    lambda name: "--" not in name and not name.endswith("-") and len(name) <= 15
)
_ips = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))


@st.composite
def env_from_sources(draw: st.DrawFn) -> Json:
    kind = draw(st.sampled_from(["configMapRef", "secretRef"]))
    ref = _object(draw, {"name": draw(dns_subdomains), "optional": _maybe(draw, st.booleans())})
    return _object(draw, {kind: ref, "prefix": _maybe(draw, _env_names)})


@st.composite
def ports(draw: st.DrawFn) -> list[Json]:
    names = draw(st.lists(_port_names, unique=True, max_size=3))
    numbers = draw(
        st.lists(
            st.integers(min_value=1, max_value=65535),
            min_size=len(names),
            max_size=len(names),
        )
    )
    return [
        _object(
            draw,
            {
                "containerPort": number,
                "name": name,
                "protocol": _maybe(draw, st.sampled_from(["TCP", "UDP", "SCTP"])),
            },
        )
        for name, number in zip(names, numbers, strict=True)
    ]


@st.composite
def profiles(draw: st.DrawFn) -> Json:
    kind = draw(st.sampled_from(["RuntimeDefault", "Unconfined", "Localhost"]))
    return _object(
        draw, {"type": kind, "localhostProfile": "profiles/p.json" if kind == "Localhost" else None}
    )


@st.composite
def container_security_contexts(draw: st.DrawFn) -> Json:
    privileged = _maybe(draw, st.booleans())
    add = draw(st.lists(st.sampled_from(["NET_BIND_SERVICE", "SYS_TIME", "CHOWN"]), max_size=2))
    escalation = draw(st.sampled_from([None, True] if privileged else [None, True, False]))
    return _object(
        draw,
        {
            "allowPrivilegeEscalation": escalation,
            "privileged": privileged,
            "capabilities": _object(draw, {"add": add or None, "drop": ["ALL"]}),
            "readOnlyRootFilesystem": _maybe(draw, st.booleans()),
            "runAsUser": _maybe(draw, _ids),
            "runAsGroup": _maybe(draw, _ids),
            "runAsNonRoot": _maybe(draw, st.booleans()),
            "procMount": _maybe(draw, st.just("Default")),
            "seccompProfile": _maybe(draw, profiles()),
            "appArmorProfile": _maybe(draw, profiles()),
            "seLinuxOptions": _maybe(draw, st.just({"level": "s0:c123,c456"})),
        },
    )


@st.composite
def pod_security_contexts(draw: st.DrawFn) -> Json:
    sysctls = draw(
        st.lists(
            st.sampled_from(
                ["net.ipv4.tcp_keepalive_time", "kernel.shm_rmid_forced", "net.ipv4.tcp_syncookies"]
            ),
            unique=True,
            max_size=2,
        )
    )
    return _object(
        draw,
        {
            "runAsUser": _maybe(draw, _ids),
            "runAsGroup": _maybe(draw, _ids),
            "runAsNonRoot": _maybe(draw, st.booleans()),
            "fsGroup": _maybe(draw, _ids),
            "fsGroupChangePolicy": _maybe(draw, st.sampled_from(["OnRootMismatch", "Always"])),
            "supplementalGroups": draw(st.lists(_ids, max_size=3)) or None,
            "supplementalGroupsPolicy": _maybe(draw, st.sampled_from(["Merge", "Strict"])),
            "seccompProfile": _maybe(draw, profiles()),
            "sysctls": [{"name": name, "value": "1"} for name in sysctls] or None,
        },
    )


@st.composite
def init_containers(draw: st.DrawFn, volume: str) -> list[Json]:
    names = draw(st.lists(dns_labels.filter(lambda n: n != "base"), unique=True, max_size=3))
    return [
        _object(
            draw,
            {
                "name": name,
                "image": draw(images()),
                "command": _maybe(draw, st.just(["sh", "-c", "true"])),
                "args": _maybe(draw, st.lists(st.text(max_size=8), max_size=2)),
                "workingDir": _maybe(draw, st.just("/work")),
                "env": draw(env_vars()) or None,
                "envFrom": draw(st.lists(env_from_sources(), max_size=2)) or None,
                "resources": _maybe(draw, container_resources()),
                "volumeMounts": _maybe(draw, st.just([{"name": volume, "mountPath": "/work"}])),
                "ports": draw(ports()) or None,
                "securityContext": _maybe(draw, container_security_contexts()),
                "restartPolicy": _maybe(draw, st.just("Always")),
                "imagePullPolicy": _maybe(draw, st.sampled_from(["Always", "IfNotPresent"])),
            },
        )
        for name in names
    ]


@st.composite
def dns_configs(draw: st.DrawFn) -> Json:
    return _object(
        draw,
        {
            "nameservers": draw(st.lists(_ips, min_size=1, max_size=3)),
            "searches": draw(st.lists(dns_subdomains, max_size=3)) or None,
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}][
                : draw(st.integers(0, 2))
            ]
            or None,
        },
    )


@st.composite
def kpo_pod_fields(draw: st.DrawFn) -> Json:
    spec: Json = {
        "image": "busybox:1.36",
        "volumes": [{"name": "work", "emptyDir": {}}],
        "volume_mounts": [{"name": "work", "mountPath": "/work"}],
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "env_from": st.lists(env_from_sources(), max_size=3),
        "init_containers": init_containers("work"),
        "ports": ports(),
        "security_context": pod_security_contexts(),
        "container_security_context": container_security_contexts(),
        "termination_grace_period": st.integers(min_value=0, max_value=7 * 24 * 3600),
        "automount_service_account_token": st.booleans(),
        "host_aliases": st.lists(
            st.builds(
                lambda ip, names: {"ip": ip, "hostnames": names},
                _ips,
                st.lists(dns_subdomains, max_size=2),
            ),
            max_size=2,
        ),
        "dnspolicy": st.sampled_from(["ClusterFirst", "ClusterFirstWithHostNet", "Default"]),
        "dns_config": dns_configs(),
        "hostname": dns_labels,
        "subdomain": dns_labels,
    }
    for field, strategy in optional.items():
        if draw(st.booleans()):
            spec[field] = draw(strategy)
    if "dns_config" in spec and draw(st.booleans()):
        spec["dnspolicy"] = "None"
    return spec


def _pod(namespace: str, spec: Any) -> Json:
    return build_pod(
        spec,
        Placement("plane", PodDefaults(namespace=namespace)),
        job_id="j-dryrun",
        attempt=0,
        submitted_at=datetime.now(UTC),
    )


def _dry_run(stack: Stack, namespace: str, pod: Json) -> None:
    with stack.kube("plane") as api:
        client.CoreV1Api(api).create_namespaced_pod(
            namespace, pod, dry_run="All", field_validation="Strict"
        )


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=kpo_pod_fields())
def test_every_accepted_pod_field_makes_a_pod_the_api_server_accepts(
    stack: Stack, namespace: str, document: Json
) -> None:
    spec = parse_task_spec(document)  # generated to be valid: a refusal is a bug too
    pod = _pod(namespace, spec)
    # The test namespaces enforce baseline (tests/stack TASK_NAMESPACE_LABELS).
    ours = violations(spec, Level.BASELINE)
    try:
        _dry_run(stack, namespace, pod)
    except ApiException as exc:
        if ours and exc.status == 403 and "violates PodSecurity" in (exc.body or ""):
            return
        pytest.fail(
            f"the API server refused an accepted spec ({exc.status}): {exc.body}\n"
            f"spec: {json.dumps(document)}\npod: {json.dumps(pod)}"
        )
    if ours:
        pytest.fail(
            f"the dispatcher refuses {[str(p) for p in ours]} but the API server's PodSecurity "
            f"admission accepts the pod\nspec: {json.dumps(document)}"
        )


#: (task spec fields, where the piece goes in the pod) refused by both.
REFUSED_BY_BOTH: list[tuple[Json, Any]] = [
    ({"env_from": [{"prefix": "X_"}]}, ("container", "envFrom", [{"prefix": "X_"}])),
    (
        {"env_from": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]},
        ("container", "envFrom", [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]),
    ),
    ({"ports": [{"containerPort": 0}]}, ("container", "ports", [{"containerPort": 0}])),
    (
        {"ports": [{"containerPort": 80, "name": "http-port-number-1"}]},
        ("container", "ports", [{"containerPort": 80, "name": "http-port-number-1"}]),
    ),
    (
        {"ports": [{"containerPort": 80, "name": "a"}, {"containerPort": 81, "name": "a"}]},
        (
            "container",
            "ports",
            [{"containerPort": 80, "name": "a"}, {"containerPort": 81, "name": "a"}],
        ),
    ),
    (
        {"container_security_context": {"privileged": True, "allowPrivilegeEscalation": False}},
        ("container", "securityContext", {"privileged": True, "allowPrivilegeEscalation": False}),
    ),
    (
        {"container_security_context": {"procMount": "Unmasked"}},
        ("container", "securityContext", {"procMount": "Unmasked"}),
    ),
    (
        {"container_security_context": {"seccompProfile": {"type": "Localhost"}}},
        ("container", "securityContext", {"seccompProfile": {"type": "Localhost"}}),
    ),
    (
        {"security_context": {"runAsUser": -1}},
        ("pod", "securityContext", {"runAsUser": -1}),
    ),
    (
        {
            "security_context": {
                "sysctls": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]
            }
        },
        (
            "pod",
            "securityContext",
            {"sysctls": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]},
        ),
    ),
    (
        {"host_aliases": [{"ip": "10.0.0.300", "hostnames": ["db"]}]},
        ("pod", "hostAliases", [{"ip": "10.0.0.300", "hostnames": ["db"]}]),
    ),
    (
        {"host_aliases": [{"ip": "10.0.0.1", "hostnames": ["DB_HOST"]}]},
        ("pod", "hostAliases", [{"ip": "10.0.0.1", "hostnames": ["DB_HOST"]}]),
    ),
    ({"dnspolicy": "None"}, ("pod", "dnsPolicy", "None")),
    (
        {"dns_config": {"nameservers": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"]}},
        ("pod", "dnsConfig", {"nameservers": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"]}),
    ),
    ({"hostname": "Worker.0"}, ("pod", "hostname", "Worker.0")),
    ({"subdomain": "a.b"}, ("pod", "subdomain", "a.b")),
    (
        {"init_containers": [{"name": "base", "image": "busybox"}]},
        ("pod", "initContainers", [{"name": "base", "image": "busybox"}]),
    ),
    (
        {
            "init_containers": [
                {
                    "name": "i",
                    "image": "busybox",
                    "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
                }
            ]
        },
        (
            "pod",
            "initContainers",
            [
                {
                    "name": "i",
                    "image": "busybox",
                    "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
                }
            ],
        ),
    ),
]


@pytest.mark.parametrize(("fields", "where"), REFUSED_BY_BOTH, ids=lambda v: str(v)[:50])
def test_each_refused_pod_field_is_refused_by_the_api_server_too(
    stack: Stack, namespace: str, fields: Json, where: Any
) -> None:
    with pytest.raises(SpecError):
        parse_task_spec({"image": "busybox", **fields})
    pod = _pod(namespace, parse_task_spec({"image": "busybox"}))
    level, key, piece = where
    target = pod["spec"]["containers"][0] if level == "container" else pod["spec"]
    target[key] = piece
    with pytest.raises(ApiException) as refused:
        _dry_run(stack, namespace, pod)
    assert refused.value.status == 422, refused.value.body
