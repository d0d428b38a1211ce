"""What the dispatcher needs from the clusters: the Protocols ``dispatcher.clusters`` meets.

The dispatcher talks to clusters only through these, so the simulation test can put
in-memory clusters in their place and run the real dispatcher against them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from dispatcher.core import Health, Snapshot

__all__ = ["Cache", "Connection", "LogStream"]


class LogStream(Protocol):
    """A container log being read: its lines, and ``close()``, which any thread may call
    (a read blocked in another thread then ends at once)."""

    def __iter__(self) -> Iterator[str]: ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...


class Connection(Protocol):
    """What the dispatcher needs from one cluster (``dispatcher.clusters``)."""

    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> dict[str, Any]: ...
    def delete_pod(
        self, namespace: str, name: str, grace_period_seconds: int | None = None
    ) -> None: ...
    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    # Secrets and ConfigMaps (``plural``: ``secrets`` or ``configmaps``): dependency copies.
    def read_object(self, plural: Any, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create_object(
        self, plural: Any, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...
    def replace_object(
        self, plural: Any, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...
    def delete_object(
        self, plural: Any, namespace: str, name: str, resource_version: str | None = None
    ) -> bool: ...
    def list_namespaced(
        self, plural: Any, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]: ...
    def pod_logs(  # noqa: PLR0917 - mirrors clusters.ClusterConnection.pod_logs
        self,
        namespace: str,
        name: str,
        container: str | None = None,
        follow: bool = False,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
    ) -> LogStream: ...


class Cache(Protocol):
    """What the dispatcher needs from the cluster cache (``dispatcher.clusters``)."""

    def snapshot(self) -> Snapshot: ...
    def assume(self, cluster: str, pod: Mapping[str, Any]) -> None: ...
    def forget(self, cluster: str, pod_name: str) -> None: ...
    def add_listener(
        self, callback: Callable[[str, str, str, dict[str, Any] | None], None]
    ) -> None: ...
    def health(self, cluster: str) -> Health: ...
    def connection(self, cluster: str) -> Connection: ...
    def managed_pods(self, cluster: str) -> list[dict[str, Any]]: ...
    def synced(self, cluster: str) -> bool: ...
