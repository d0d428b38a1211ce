"""Fixtures for the Prometheus end-to-end tests: the dispatcher as a process (from the e2e
tests) and a real Prometheus server scraping it.

The server is the one built from its Go module by ``make stack-build``; if it is not built,
the tests that need it fail saying so (never skip).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Fixtures, re-exported (the first two): the dispatcher process, and gpu-a100's API server
# outage (which also restarts that cluster's scheduler and KWOK at teardown, so later tests
# find them working at once instead of after their minute-long reconnect backoff).
from tests.clusters.conftest import a100_outage  # noqa: F401
from tests.e2e.conftest import service_factory  # noqa: F401
from tests.stack.fixtures import stack_binary

from .server import PrometheusServer


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return stack_binary("prometheus")


@pytest.fixture
def prometheus_factory(
    prometheus_binary: str, tmp_path: Path
) -> Iterator[Callable[..., PrometheusServer]]:
    """``make(target=..., rule_files=[...], **options)`` -> a started ``PrometheusServer``;
    every server started is stopped at teardown."""
    started: list[PrometheusServer] = []

    def make(**options: Any) -> PrometheusServer:
        server = PrometheusServer(prometheus_binary, tmp_path / f"prom{len(started)}", **options)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()
