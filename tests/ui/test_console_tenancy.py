"""Who sees what in the console: the API's tenancy rules, judged in the browser.

The service has the ``admin`` tenant (static token) and ``team-a``, whose Airflow workers
sign in with their ServiceAccount tokens of ``plane`` (TokenReview, as the API checks them).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from kubernetes import client
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from tests.stack import Stack
from tests.stack.dispatcher_config import AUDIENCE
from tests.support import ADMIN_TOKEN, ServiceProcess, succeed, task
from tests.ui.conftest import console_errors, sign_in, wait_for
from tests.ui.test_console import row_state


@pytest.fixture
def team_service(service_factory: Any, stack: Stack, namespace: str) -> ServiceProcess:
    with stack.kube("plane") as api:
        client.CoreV1Api(api).create_namespaced_service_account(
            namespace, {"metadata": {"name": "worker"}}
        )
    service: ServiceProcess = service_factory(
        tenants={"team-a": {"callers": [f"{namespace}/worker"]}},
        auth={
            "static_tokens": [
                {"sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(), "tenant": "admin"}
            ],
            "token_review": {"audience": AUDIENCE},
        },
    )
    return service


def test_a_tenant_signed_in_with_its_service_account_sees_only_its_own_jobs(
    browser: WebDriver, team_service: ServiceProcess, stack: Stack, namespace: str
) -> None:
    token = stack.service_account_token("plane", namespace, "worker", audiences=[AUDIENCE])
    with (
        team_service.client() as admin,
        team_service.client(token=token) as team_a,
    ):
        theirs, _ = admin.submit(task("admin-only", annotations=succeed("1s")))
        sign_in(browser, team_service, token)
        header = browser.find_element(By.TAG_NAME, "header").text
        assert f"serviceaccount:{namespace}/worker" in header
        wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live"))
        # Another tenant's job that changes while the page is open, then one of team-a's:
        # once team-a's appears, the other's changes would have been shown before it.
        later, _ = admin.submit(task("admin-later", annotations=succeed("1s")))
        own, _ = team_a.submit(task("team-a-own", annotations=succeed("1s")))
        wait_for(browser, lambda d: row_state(d, own["id"]) == "succeeded")
        assert row_state(browser, theirs["id"]) is None
        assert row_state(browser, later["id"]) is None
        assert "admin-only" not in browser.page_source
        # Another tenant's job page does not exist for team-a, as in the API (404).
        browser.get(f"{team_service.url}/ui/jobs/{theirs['id']}")
        assert browser.find_element(By.TAG_NAME, "h1").text == "No such job"
        assert "admin-only" not in browser.page_source
        # The admin sees both.
        browser.delete_all_cookies()
        sign_in(browser, team_service)
        wait_for(browser, lambda d: row_state(d, theirs["id"]) and row_state(d, own["id"]))
        assert [e for e in console_errors(browser) if "status of 404" not in e["message"]] == []
