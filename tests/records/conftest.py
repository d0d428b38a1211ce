"""Fixtures for the job-record stores: ``kit`` runs a test on both stores (``MemoryRecords``,
and ``KubernetesRecords`` on the stack's `plane` as the dispatcher's own ServiceAccount in a
fresh namespace); ``kube_kit`` is the Kubernetes one alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from dispatcher.clusters.connection import Connection
from dispatcher.dispatching.records import KubernetesRecords
from tests.clusters.provider import KubeconfigProvider
from tests.stack import Stack, StackEnv

from .kits import Kit, KubernetesKit, MemoryKit


@pytest.fixture
def admin(stack: Stack) -> Iterator[client.ApiClient]:
    with stack.kube("plane") as api:
        yield api


@pytest.fixture
def records_namespace(stack: Stack, admin: client.ApiClient) -> str:
    """A fresh namespace of `plane` where the dispatcher's ServiceAccount keeps records.

    Never deleted: the stack runs no namespace controller (it would stay Terminating).
    """
    name = f"rec-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(admin).create_namespace(
        {"metadata": {"name": name, "labels": {"kube-dispatcher.dev/test": "true"}}}
    )
    stack.grant_task_namespace("plane", name)
    return name


@pytest.fixture
def provider(stack_env: StackEnv) -> KubeconfigProvider:
    return KubeconfigProvider(stack_env)


@pytest.fixture
def plane_connection(provider: KubeconfigProvider) -> Connection:
    """The dispatcher's connection to `plane`, as its own ServiceAccount."""
    return Connection("plane", provider)


def kubernetes_kit(
    stack: Stack, admin: client.ApiClient, namespace: str, connection: Connection, **kwargs: Any
) -> KubernetesKit:
    return KubernetesKit(
        stack, admin, namespace, KubernetesRecords(connection, namespace, **kwargs)
    )


@pytest.fixture(params=["memory", "kubernetes"])
def kit(request: pytest.FixtureRequest) -> Kit:
    """Each store in turn (Kubernetes: a fresh namespace without a fence Lease)."""
    if request.param == "memory":
        return MemoryKit()
    return kubernetes_kit(
        request.getfixturevalue("stack"),
        request.getfixturevalue("admin"),
        request.getfixturevalue("records_namespace"),
        request.getfixturevalue("plane_connection"),
        page_size=3,
    )


@pytest.fixture
def kube_kit(
    stack: Stack, admin: client.ApiClient, records_namespace: str, plane_connection: Connection
) -> KubernetesKit:
    """The Kubernetes store alone (small pages: a list of more than 3 records pages)."""
    return kubernetes_kit(stack, admin, records_namespace, plane_connection, page_size=3)
