"""Simulation tests run thousands of dispatcher steps: the dispatcher's log lines are
dropped (they would cost more than the steps and drown a failure's trace)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog


def _drop(_logger: Any, _method: str, _event: Any) -> Any:
    raise structlog.DropEvent


@pytest.fixture(autouse=True)
def _quiet_dispatcher() -> Iterator[None]:
    before = structlog.get_config()
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.configure(**before)
