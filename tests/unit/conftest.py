"""Unit tests run against a clean environment: no DISPATCHER_* variable leaks in."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_dispatcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DISPATCHER_"):
            monkeypatch.delenv(name)
