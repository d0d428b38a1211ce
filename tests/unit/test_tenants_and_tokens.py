"""Tenants' rules (what a task may ask for, whose jobs a caller sees), static tokens and the
TokenReview cache, and the settings that must be there for the service to start.

The TokenReview call itself is tested against the real plane API server in
tests/e2e/test_authentication.py; here a recorded answer stands in for it, to count calls.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.api.auth import Authenticator, Review, token_hash
from dispatcher.api.limits import json_depth_problem
from dispatcher.core import ClusterRole, Reason, Verdict, parse_task_spec, route
from dispatcher.core.tenancy import (
    Principal,
    TenantPolicy,
    authorize,
    cluster_allowance,
    may_manage,
    may_read,
)
from dispatcher.errors import ConfigError, Forbidden, Unauthenticated
from dispatcher.settings import AuthSettings, load_settings
from tests.unit.factories import cluster, info, node, snapshot

TEAM_A = TenantPolicy(
    callers=("airflow/*",),
    clusters=("gpu-a100",),
    namespaces=("team-a",),
    service_accounts=("trainer",),
    priority_classes=("batch-low",),
)


def spec(**fields: Any) -> Any:
    return parse_task_spec({"image": "python:3.12", **fields})


def test_a_task_within_its_tenants_rules_is_allowed() -> None:
    task = spec(
        namespace="team-a",
        service_account_name="trainer",
        priority_class_name="batch-low",
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    assert authorize(task, "team-a", TEAM_A) == []


def test_an_administrators_task_is_limited_only_by_pod_security_and_its_clusters() -> None:
    task = spec(
        namespace="anywhere",
        service_account_name="cluster-admin",
        priority_class_name="batch-high",
        volumes=[{"name": "nfs", "nfs": {"server": "nfs.example.com", "path": "/"}}],
    )
    assert authorize(task, "ops", TenantPolicy(role="admin")) == []
    assert len(authorize(task, "team-a", TenantPolicy())) == 4


def test_every_refusal_names_its_field_and_the_setting_that_allows_it() -> None:
    task = spec(
        namespace="kube-system",
        service_account_name="cluster-admin",
        priority_class_name="system-node-critical",
        requirements={"priority": 5},
        volumes=[{"name": "share", "nfs": {"server": "nfs.example", "path": "/"}}],
    )
    problems = {p.field: p.message for p in authorize(task, "team-a", TEAM_A)}
    assert set(problems) == {
        "namespace",
        "service_account_name",
        "priority_class_name",
        "requirements.priority",
        "volumes[0]",
    }
    assert "tenants.team-a.namespaces" in problems["namespace"]
    assert "tenants.team-a.service_accounts" in problems["service_account_name"]
    assert "tenants.team-a.priority_classes" in problems["priority_class_name"]
    assert "tenants.team-a.priority" in problems["requirements.priority"]
    assert "nfs" in problems["volumes[0]"]
    assert "tenants.team-a.volume_types" in problems["volumes[0]"]


def test_others_jobs_are_invisible_unless_admin_or_read_others() -> None:
    member = Principal("team-a", TEAM_A, "token:team-a")
    reader = Principal("audit", TenantPolicy(read_others=True), "token:audit")
    admin = Principal("ops", TenantPolicy(role="admin"), "token:ops")
    assert may_read(member, "team-a")
    assert not may_read(member, "team-b")
    assert may_read(reader, "team-b")
    assert not may_manage(reader, "team-b")
    assert may_read(admin, "team-b")
    assert may_manage(admin, "team-b")


def test_routing_never_places_a_task_on_a_cluster_its_tenant_may_not_use() -> None:
    # The in-plane cluster is preferred and fits: only the tenant's allow-list moves the
    # task to gpu-a100, and the decision says why plane was passed over.
    state = snapshot(
        cluster(info("plane", role=ClusterRole.IN_PLANE), [node("p1")]),
        cluster(info("gpu-a100"), [node("a1")]),
    )
    assert route(spec(), state).cluster == "plane"
    allowance = cluster_allowance("team-a", {"team-a": TEAM_A})
    decision = route(spec(), state, None, allowance)
    assert decision.cluster == "gpu-a100"
    plane = decision.explain("plane")
    assert plane is not None
    assert plane.reason is Reason.NOT_ALLOWED
    assert "tenants.team-a.clusters" in plane.message
    nowhere = cluster_allowance("gone", {"team-a": TEAM_A})
    assert route(spec(), state, None, nowhere).verdict is Verdict.REJECT
    assert cluster_allowance("team-b", {"team-b": TenantPolicy()}) is None


def _authenticator(review: Any = None, **auth: Any) -> Authenticator:
    settings = AuthSettings.model_validate(auth)
    return Authenticator(settings, {"team-a": TEAM_A, "team-b": TenantPolicy()}, review)


def test_static_tokens_are_compared_by_their_hash_and_name_a_tenant() -> None:
    auth = _authenticator(
        static_tokens=[
            {"sha256": token_hash("a-secret"), "tenant": "team-a"},
            {"sha256": token_hash("b-secret").upper(), "tenant": "team-b"},
        ]
    )
    assert auth.authenticate("Bearer a-secret").tenant == "team-a"
    assert auth.authenticate("bearer b-secret").tenant == "team-b"
    with pytest.raises(Unauthenticated, match="not valid"):
        auth.authenticate("Bearer a-secret-not")
    with pytest.raises(Unauthenticated, match="bearer token is required"):
        auth.authenticate(None)
    with pytest.raises(Unauthenticated, match="bearer token is required"):
        auth.authenticate("Basic YTpi")


class _Reviews:
    def __init__(self, answer: Review) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self, token: str) -> Review:
        self.calls += 1
        return self.answer


def test_token_reviews_are_cached_briefly_and_boundedly() -> None:
    now = [0.0]
    reviews = _Reviews(Review(True, "system:serviceaccount:airflow:worker"))
    settings = AuthSettings.model_validate({"token_review": {"cache_seconds": 10, "cache_size": 2}})
    auth = Authenticator(settings, {"team-a": TEAM_A}, reviews, clock=lambda: now[0])
    assert auth.authenticate("Bearer t1").tenant == "team-a"
    assert auth.authenticate("Bearer t1").identity == "serviceaccount:airflow/worker"
    assert reviews.calls == 1
    now[0] = 10.5
    auth.authenticate("Bearer t1")
    assert reviews.calls == 2
    auth.authenticate("Bearer t2")
    auth.authenticate("Bearer t3")  # the cache holds two: t1 goes
    auth.authenticate("Bearer t1")
    assert reviews.calls == 5


def test_a_refused_or_unclaimed_service_account_token_says_why() -> None:
    refused = _authenticator(_Reviews(Review(False, error="token has expired")), token_review={})
    with pytest.raises(Unauthenticated, match="token has expired"):
        refused.authenticate("Bearer x")
    stranger = _authenticator(
        _Reviews(Review(True, "system:serviceaccount:other:robot")), token_review={}
    )
    with pytest.raises(Forbidden, match=r"other/robot.*tenants.<name>.callers"):
        stranger.authenticate("Bearer x")


def test_the_service_needs_an_authentication_method_or_the_development_flag() -> None:
    assert AuthSettings().problems()[0].field == "service.auth"
    assert AuthSettings(insecure_development_mode=True).problems() == []
    assert AuthSettings(token_review={}).problems() == []  # type: ignore[arg-type]


def test_static_tokens_must_name_a_tenant_and_tenants_known_clusters(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    path = tmp_path / "dispatcher.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {"name": "plane", "role": "in-plane", "credentials": {"in_cluster": True}}
                ],
                "tenants": {"team-a": {"clusters": ["nowhere"]}},
                "service": {"auth": {"static_tokens": [{"sha256": digest, "tenant": "team-z"}]}},
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert [p.field for p in caught.value.problems] == [
        "tenants.team-a.clusters",
        "service.auth.static_tokens[0].tenant",
    ]


def test_a_token_hash_listed_twice_is_refused_with_both_entries(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    path = tmp_path / "dispatcher.yaml"
    twice = [{"sha256": digest, "tenant": "team-a"}, {"sha256": digest.upper(), "tenant": "ops"}]
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {"name": "plane", "role": "in-plane", "credentials": {"in_cluster": True}}
                ],
                "tenants": {"team-a": {}, "ops": {"role": "admin"}},
                "service": {"auth": {"static_tokens": twice}},
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    [problem] = caught.value.problems
    assert problem.field == "service.auth.static_tokens"
    assert "entries 0 and 1 have the same sha256" in problem.message


def test_json_nesting_is_measured_outside_strings() -> None:
    assert json_depth_problem(b'{"a": "[[[[[[[[[["}', 3) is None
    assert json_depth_problem(b"[" * 5 + b"]" * 5, 4) is not None
    assert json_depth_problem(b'{"a": "\\"[[[["}', 2) is None
