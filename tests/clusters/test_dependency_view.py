"""The cache's view of each task namespace's Secrets, ConfigMaps, PVCs and ServiceAccounts:
names and key names, never a value; follows objects created after start (real stack)."""

from __future__ import annotations

import base64
import gc
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from dispatcher.clusters import ClusterCache
from dispatcher.clusters.connection import NamespacedResource
from dispatcher.core.dependencies import DependencyKind
from tests.stack import Stack

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

SECRET = DependencyKind.SECRET
PVC = DependencyKind.PERSISTENT_VOLUME_CLAIM


def _events(cache: ClusterCache) -> Callable[[str, str], threading.Event]:
    """``expect(cluster, event_type)``: an Event set when the cache reports that
    dependency event (``listed``, ``ADDED``...) of that cluster."""
    waiting: list[tuple[str, str, threading.Event]] = []
    lock = threading.Lock()

    def listener(cluster: str, kind: str, event_type: str, obj: Any) -> None:
        if kind != "dependency":
            return
        with lock:
            for name, wanted, event in waiting:
                if (name, wanted) == (cluster, event_type):
                    event.set()

    cache.add_listener(listener)

    def expect(cluster: str, event_type: str) -> threading.Event:
        event = threading.Event()
        with lock:
            waiting.append((cluster, event_type, event))
        return event

    return expect


def _listed(cache: ClusterCache, cluster: str, timeout: float = 30) -> None:
    for informer in cache.dependency_informers(cluster).values():
        assert informer.wait_synced(timeout), f"{informer.name} did not list: {informer.last_error}"


def test_the_view_picks_up_a_pvc_created_after_start(
    make_cache: Callable[..., ClusterCache], stack: Stack, namespace: str
) -> None:
    cache = make_cache(
        clusters=("gpu-h100",), pod_defaults={"namespace": namespace}, check_dependencies=True
    )
    expect = _events(cache)
    _listed(cache, "gpu-h100")
    view = (cache.snapshot().clusters[0].objects or {})[namespace]
    assert view.objects[PVC] == {}
    added = expect("gpu-h100", "ADDED")
    with stack.kube("gpu-h100") as api:
        client.CoreV1Api(api).create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "dataset-a"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
    assert added.wait(30), "no dependency event for the new PVC"
    view = (cache.snapshot().clusters[0].objects or {})[namespace]
    assert view.objects[PVC] == {"dataset-a": frozenset()}


def _admin(stack: Stack, cluster: str, act: Callable[[client.CoreV1Api], Any]) -> None:
    """``act`` with an admin client, leaving nothing of its answers behind (the client
    keeps its last response, which would hold the values this test looks for)."""
    with stack.kube(cluster) as api:
        act(client.CoreV1Api(api))
        api.last_response = None


def _held_anywhere(needles: list[str], own: list[str]) -> list[str]:
    """Every string or bytes object the process holds (through any container) that
    contains one of ``needles``, other than the needles and ``own`` themselves."""
    gc.collect()
    found = []
    mine = {id(n) for n in [*needles, *own]}
    for holder in gc.get_objects():
        for value in gc.get_referents(holder):
            if id(value) in mine:
                continue
            # type(), not isinstance(): lazy proxies (Airflow's) import on __class__.
            kind = type(value)
            if issubclass(kind, str):
                text = value
            elif issubclass(kind, bytes | bytearray):
                text = bytes(value).decode("latin-1")
            else:
                continue
            found.extend(f"{type(holder).__name__}: {text[:80]!r}" for n in needles if n in text)
    return found


def test_no_secret_or_configmap_value_is_held_only_names_and_keys(
    make_cache: Callable[..., ClusterCache], stack: Stack, namespace: str
) -> None:
    value = uuid.uuid4().hex
    later = uuid.uuid4().hex
    applied = json.dumps({"kind": "Secret", "stringData": {"password": value}})
    _admin(
        stack,
        "gpu-a100",
        lambda core: core.create_namespaced_secret(
            namespace,
            {
                "metadata": {
                    "name": "db",
                    # What `kubectl apply` leaves on a Secret: the whole of it, values too.
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied},
                },
                "stringData": {"password": value, "user": "etl"},
            },
        ),
    )
    _admin(
        stack,
        "gpu-a100",
        lambda core: core.create_namespaced_config_map(
            namespace,
            {"metadata": {"name": "cfg"}, "data": {"mode": value}, "binaryData": {"blob": ""}},
        ),
    )
    cache = make_cache(
        clusters=("gpu-a100",), pod_defaults={"namespace": namespace}, check_dependencies=True
    )
    expect = _events(cache)
    _listed(cache, "gpu-a100")
    # A change arrives through the watch as well.
    modified = expect("gpu-a100", "MODIFIED")
    _admin(
        stack,
        "gpu-a100",
        lambda core: core.patch_namespaced_secret(
            "db", namespace, {"stringData": {"password": later, "token": later}}
        ),
    )
    assert modified.wait(30), "no dependency event for the changed Secret"

    view = (cache.snapshot().clusters[0].objects or {})[namespace]
    assert view.objects[SECRET]["db"] == frozenset({"password", "user", "token"})
    assert view.objects[DependencyKind.CONFIG_MAP]["cfg"] == frozenset({"mode", "blob"})
    kept = json.dumps([i.items() for i in cache.dependency_informers("gpu-a100").values()])
    needles = [v for raw in (value, later) for v in (raw, base64.b64encode(raw.encode()).decode())]
    assert not [n for n in needles if n in kept]
    # Nor anywhere else in the process: not in the client's last response, not in a
    # cached list. The test's own copies of the values are the needles themselves.
    assert _held_anywhere(needles, own=[applied]) == []


def test_pvcs_and_service_accounts_are_listed_as_metadata_only(
    make_cache: Callable[..., ClusterCache], stack: Stack, namespace: str
) -> None:
    with stack.kube("gpu-a100") as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "runner"}})
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
    cache = make_cache(
        clusters=("gpu-a100",), pod_defaults={"namespace": namespace}, check_dependencies=True
    )
    connection = cache.connection("gpu-a100")
    accounts = connection.list_objects(NamespacedResource("serviceaccounts", namespace, True))
    claims = connection.list_objects(NamespacedResource("persistentvolumeclaims", namespace, True))
    assert [i["metadata"]["name"] for i in accounts.items] == ["runner"]
    assert [i["metadata"]["name"] for i in claims.items] == ["data"]
    for item in [*accounts.items, *claims.items]:
        assert item["kind"] == "PartialObjectMetadata"
        assert "spec" not in item
        assert "status" not in item
