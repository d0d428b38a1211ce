"""Tests use the stack's own builds of their tools, never the machine's, and say how to get them.

No stack is started: these check how ``tests.stack.fixtures.stack_binary`` resolves a binary.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.stack import build
from tests.stack.fixtures import stack_binary


@pytest.fixture
def decoys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``promtool`` and a ``prometheus`` first on PATH that would fail if ever run."""
    decoys = tmp_path / "decoys"
    decoys.mkdir()
    for name in ("promtool", "prometheus"):
        path = decoys / name
        path.write_text("#!/bin/sh\nexit 99\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{decoys}{os.pathsep}{os.environ.get('PATH', '')}")
    return decoys


@pytest.mark.parametrize("name", ["promtool", "prometheus"])
def test_monitoring_tools_come_from_the_stack_cache_not_from_path(decoys: Path, name: str) -> None:
    path = Path(stack_binary(name))
    assert path.parent.parent == build.cache_root()
    assert path.parent.name.startswith("prometheus-")
    version = subprocess.run(  # noqa: S603 - the binary just resolved
        [str(path), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"{name}, version {build.PROMETHEUS_VERSION} " in version


def test_a_tool_that_is_not_built_fails_the_test_saying_make_stack_build(
    decoys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-cache"
    monkeypatch.setenv("KD_STACK_CACHE", str(empty))
    with pytest.raises(pytest.fail.Exception) as failure:
        stack_binary("promtool")
    message = str(failure.value)
    assert message.startswith(f"`promtool` is not built (looked for {empty}/prometheus-")
    assert "run `make stack-build`" in message
