"""The dispatcher service as a real process (``dispatcher serve``) against the test stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.client import DispatcherClient
from tests.stack import Stack
from tests.stack.dispatcher_config import dispatcher_settings
from tests.support import ServiceProcess


@pytest.fixture
def service_factory(stack: Stack, namespace: str, tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def make(
        clusters: dict[str, dict[str, Any]] | None = None,
        tenants: dict[str, dict[str, Any]] | None = None,
        fair_share: dict[str, Any] | None = None,
        **service_settings: Any,
    ) -> ServiceProcess:
        config = dispatcher_settings(
            stack,
            tmp_path / f"svc{len(started)}",
            namespace=namespace,
            service=service_settings,
            clusters=clusters,
            tenants=tenants,
            fair_share=fair_share,
        )
        svc = ServiceProcess(config, tmp_path / f"svc{len(started)}.log")
        svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


@pytest.fixture
def service(service_factory: Any) -> ServiceProcess:
    return service_factory()


@pytest.fixture
def api(service: ServiceProcess) -> Iterator[DispatcherClient]:
    with service.client() as client:
        yield client
