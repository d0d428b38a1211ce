"""The cluster edge's public API changes only on purpose."""

from __future__ import annotations

import inspect

import dispatcher.clusters
from dispatcher import metrics
from dispatcher.clusters import ClientProvider, ClusterCache, Connection, HealthReason
from dispatcher.core import Health

EXPECTED = {
    "Breaker",
    "CacheOptions",
    "ClientProvider",
    "ClusterCache",
    "ClusterHealth",
    "Connection",
    "HealthMachine",
    "HealthPolicy",
    "HealthReason",
    "HealthStatus",
    "Informer",
    "ListResult",
    "Listener",
    "TokenBucket",
    "WatchOptions",
    "backoff_delay",
    "diff_lists",
    "object_key",
}


def test_exported_names_are_the_expected_ones_and_exist() -> None:
    assert set(dispatcher.clusters.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(dispatcher.clusters, name) is not None


def test_the_client_provider_protocol_has_exactly_two_methods() -> None:
    members = {
        name
        for name, _ in inspect.getmembers(ClientProvider, inspect.isfunction)
        if not name.startswith("_")
    }
    assert members == {"api_client", "invalidate"}


def test_the_cache_and_connection_offer_what_the_dispatcher_uses() -> None:
    for name in (
        "snapshot",
        "assume",
        "forget",
        "add_listener",
        "health",
        "status",
        "connection",
        "managed_pods",
        "start",
        "stop",
        "wait_synced",
    ):
        assert callable(getattr(ClusterCache, name))
    for name in ("create_pod", "delete_pod", "read_pod", "pod_logs", "list_pods", "list_nodes"):
        assert callable(getattr(Connection, name))
    assert list(inspect.signature(Connection.pod_logs).parameters)[:7] == [
        "self",
        "namespace",
        "name",
        "container",
        "follow",
        "since_seconds",
        "tail_lines",
    ]


def test_the_health_metrics_know_every_health_and_reason() -> None:
    assert tuple(h.value for h in Health) == metrics.HEALTH_STATES
    assert tuple(r.value for r in HealthReason) == metrics.HEALTH_REASONS


def test_refusal_reasons_are_the_metric_labels() -> None:
    from dispatcher.errors import RefusalReason

    assert tuple(r.value for r in RefusalReason) == metrics.REFUSAL_REASONS
