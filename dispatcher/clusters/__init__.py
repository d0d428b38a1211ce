"""The edge to the clusters: connections, informers, health and the ``ClusterCache``.

I/O: HTTP to every cluster's API server, on informer threads (one per watch) and on the
callers' threads (pod creation, deletion, logs). ``ApiClient``\\ s come from a
``ClientProvider`` the service wires in (``dispatcher.credentials``); this package never
imports it. The pure parts (``backoff_delay``, ``TokenBucket``'s arithmetic,
``HealthMachine``, ``diff_lists``) take time and randomness as arguments.

The names below are the public API; modules are importable for their finer details.
"""

from dispatcher.clusters.cache import CacheOptions, ClusterCache, Listener
from dispatcher.clusters.connection import ClientProvider, Connection, ListResult
from dispatcher.clusters.health import (
    Breaker,
    ClusterHealth,
    HealthMachine,
    HealthPolicy,
    HealthReason,
    HealthStatus,
)
from dispatcher.clusters.pacing import TokenBucket, backoff_delay
from dispatcher.clusters.watching import Informer, WatchOptions, diff_lists, object_key

__all__ = [
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
]
