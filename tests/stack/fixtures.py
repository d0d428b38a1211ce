"""pytest fixtures for the test stack (loaded as a plugin by tests/conftest.py).

The stack is started once per session (or reused when ``python -m tests.stack up`` left
it running) and never skipped: if it cannot start, every test that needs it fails with
the reason.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from . import build
from .launcher import (
    TASK_NAMESPACE_LABELS,
    Stack,
    StackEnv,
    StackError,
    port_base_default,
    state_dir_default,
)

_START_FAILURE: list[str] = []

#: Ports a stack takes above its base (the highest is base+42); xdist workers are spaced
#: this far apart.
PORTS_PER_STACK = 100


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker runs its own stack: its own directory, and ports
    ``PORTS_PER_STACK`` apart from the configured base (worker ``gw0`` keeps the base)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    index = int(worker.removeprefix("gw"))
    os.environ["KD_STACK_DIR"] = f"{state_dir_default()}-{worker}"
    os.environ["KD_STACK_PORT_BASE"] = str(port_base_default() + PORTS_PER_STACK * index)


def stack_binary(name: str) -> str:
    """Path of ``name`` as built by ``make stack-build`` (never the machine's own copy); fails
    the test, never skips it, if it is not built."""
    try:
        return str(build.built_binary(name))
    except (build.NotBuiltError, SystemExit) as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)  # outside `except`: the reason alone, not a chain


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    if _START_FAILURE:  # pytest retries a failed session fixture for every test: once is enough
        pytest.fail(_START_FAILURE[0], pytrace=False)
    stack = Stack()
    was_up = stack.is_up()
    try:
        stack.up()
    except (StackError, SystemExit) as exc:
        _START_FAILURE.append(f"the test stack could not start: {exc}")
        pytest.fail(_START_FAILURE[0], pytrace=False)
    yield stack
    if not was_up and os.environ.get("KD_STACK_KEEP") != "1":
        stack.down()


#: An audited stack (``audited_stack``) takes ports this far above the session stack's,
#: inside the same ``PORTS_PER_STACK`` span.
AUDITED_OFFSET = 50


@pytest.fixture(scope="session")
def audited_stack() -> Iterator[Stack]:
    """A second stack whose apiservers keep an audit log (``Stack(audit=True)``), for tests
    that count requests from the apiservers' own records: its own folder
    (``KD_STACK_DIR``-audit) and ports (``AUDITED_OFFSET`` above the base). Started on
    first use, stopped at the end (reused, and kept, like ``stack``)."""
    stack = Stack(
        state_dir=state_dir_default().with_name(state_dir_default().name + "-audit"),
        port_base=port_base_default() + AUDITED_OFFSET,
        audit=True,
    )
    was_up = stack.is_up()
    try:
        stack.up()
    except (StackError, SystemExit) as exc:
        pytest.fail(f"the audited test stack could not start: {exc}", pytrace=False)
    if not stack.audited():
        pytest.fail(
            f"the stack at {stack.state_dir} was started without an audit log: stop it "
            "(KD_STACK_DIR=... python -m tests.stack down)",
            pytrace=False,
        )
    yield stack
    if not was_up and os.environ.get("KD_STACK_KEEP") != "1":
        stack.down()


@pytest.fixture(scope="session")
def stack_env(stack: Stack) -> StackEnv:
    return stack.env()


@pytest.fixture
def namespace(stack: Stack) -> Iterator[str]:
    """A fresh namespace, present in every cluster, that the dispatcher identity may use."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    for spec in stack.clusters:
        with stack.kube(spec) as api:
            client.CoreV1Api(api).create_namespace(
                {
                    "metadata": {
                        "name": name,
                        "labels": {"kube-dispatcher.dev/test": "true", **TASK_NAMESPACE_LABELS},
                    }
                }
            )
        stack.grant_task_namespace(spec, name)
    yield name
    # No namespace controller runs in the stack, so a deleted namespace would stay
    # Terminating forever; removing its pods frees the simulated capacity instead.
    for spec in stack.clusters:
        # A cluster a test stopped is restarted by `faults`; its pods may be gone already.
        with contextlib.suppress(Exception), stack.kube(spec) as api:
            client.CoreV1Api(api).delete_collection_namespaced_pod(name, grace_period_seconds=0)


class Faults:
    """Stops parts of the stack for a test and always brings them back afterwards."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._stopped_apiservers: set[str] = set()
        self._vault_stopped = False

    def stop_apiserver(self, cluster: str) -> None:
        self.stack.stop_apiserver(cluster)
        self._stopped_apiservers.add(cluster)

    def start_apiserver(self, cluster: str) -> None:
        self.stack.start_apiserver(cluster)
        self._stopped_apiservers.discard(cluster)

    def stop_vault(self) -> None:
        self.stack.stop_vault()
        self._vault_stopped = True

    def start_vault(self) -> None:
        self.stack.start_vault()
        self._vault_stopped = False

    def restore(self) -> None:
        for cluster in sorted(self._stopped_apiservers):
            self.start_apiserver(cluster)
        if self._vault_stopped:
            self.start_vault()


@pytest.fixture
def faults(stack: Stack) -> Iterator[Faults]:
    faults = Faults(stack)
    yield faults
    faults.restore()


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    for item in items:
        if {"stack", "audited_stack"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)
