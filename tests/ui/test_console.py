"""The web console (``/ui``) in a real browser, against the dispatcher on the test stack.

Each test starts ``dispatcher serve`` with the test settings (the ``admin`` tenant's static
token, TokenReview against ``plane``), signs in through the form as a person would, and
judges what Chromium shows. Jobs are submitted through the API, never through the page.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from dispatcher.api.console import COOKIE
from dispatcher.client import DispatcherClient
from tests.stack import Stack
from tests.support import ADMIN_TOKEN, ServiceProcess, succeed, task
from tests.ui.conftest import console_errors, sign_in, wait_for

CLUSTERS = ("gpu-a100", "gpu-h100", "plane")


def row_state(driver: WebDriver, job_id: str) -> str | None:
    # Read in one script: the live updates replace rows between two WebDriver calls.
    state: str | None = driver.execute_script(
        "const row = document.querySelector(`#jobs tr[data-job='${arguments[0]}']`);"
        "return row ? row.dataset.state : null;",
        job_id,
    )
    return state


def rows_by(driver: WebDriver, selector: str, key: str) -> dict[str, str]:
    """``data-<key>`` -> text of the rows ``selector`` finds, read at one moment."""
    rows: list[list[str]] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(row => [row.dataset[arguments[1]], row.innerText]);",
        selector,
        key,
    )
    return dict(rows)


def test_a_visitor_without_a_valid_token_sees_nothing(
    browser: WebDriver, service: ServiceProcess, api: DispatcherClient
) -> None:
    job, _ = api.submit(task("not-for-strangers", annotations=succeed("1s")))
    for page in ("/ui/jobs", f"/ui/jobs/{job['id']}", "/ui/clusters", "/ui/queue"):
        browser.get(service.url + page)
        assert "/ui/sign-in" in browser.current_url, page
        # The form (which returns to the page asked for) and nothing of the job or clusters.
        assert browser.find_element(By.ID, "token")
        assert "not-for-strangers" not in browser.page_source
        assert "gpu-h100" not in browser.page_source
    # The page's helpers refuse too, and so does a wrong token in the form.
    for helper in (f"/ui/jobs/{job['id']}/log", "/ui/events"):
        answer = httpx.get(service.url + helper, timeout=10)
        assert answer.status_code == 401, (helper, answer.text)
    wrong = httpx.get(
        service.url + "/ui/jobs", cookies={COOKIE: "not-a-token"}, follow_redirects=False
    )
    assert wrong.status_code == 303
    assert wrong.headers["location"].startswith("/ui/sign-in")
    browser.get(f"{service.url}/ui/sign-in")
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "sign-in").click()
    error = wait_for(browser, lambda d: d.find_elements(By.ID, "sign-in-error"))
    assert "the ServiceAccount token was refused" in error[0].text
    assert browser.get_cookies() == []
    # The only error the browser saw is the refused sign-in itself.
    assert all("status of 401" in e["message"] for e in console_errors(browser))


def test_sign_in_keeps_the_token_in_a_strict_http_only_cookie(
    browser: WebDriver, service: ServiceProcess
) -> None:
    sign_in(browser, service)
    (cookie,) = browser.get_cookies()
    assert cookie["name"] == COOKIE
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is True
    assert cookie["path"] == "/ui"
    # Scripts cannot read it.
    assert browser.execute_script("return document.cookie") == ""
    browser.find_element(By.CSS_SELECTOR, ".sign-out button").click()
    wait_for(browser, lambda d: "/ui/sign-in" in d.current_url)
    assert browser.get_cookies() == []
    browser.get(f"{service.url}/ui/jobs")
    assert "/ui/sign-in" in browser.current_url


def test_every_page_is_served_under_a_strict_content_security_policy(
    service: ServiceProcess,
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for page in ("/ui/jobs", "/ui/clusters", "/ui/queue", "/ui/sign-in"):
        answer = httpx.get(service.url + page, headers=headers, timeout=10)
        assert answer.status_code == 200, page
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        assert "<script>" not in answer.text  # no inline script to allow


def test_a_submitted_job_appears_and_succeeds_without_a_reload(
    browser: WebDriver, service: ServiceProcess, api: DispatcherClient
) -> None:
    sign_in(browser, service)
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live"))
    # A mark on this document: a reload or a navigation would lose it.
    browser.execute_script("window.consoleMark = 'still-here'")
    job, _ = api.submit(task("live-row", annotations=succeed("3s")))
    wait_for(browser, lambda d: row_state(d, job["id"]) is not None)
    seen = {row_state(browser, job["id"])}
    state = wait_for(
        browser,
        lambda d: (s := row_state(d, job["id"])) in ("succeeded", "failed") and s,
    )
    assert state == "succeeded"
    seen.add(state)
    assert browser.execute_script("return window.consoleMark") == "still-here"
    assert "plane" in rows_by(browser, "#jobs tbody tr", "job")[job["id"]]
    assert console_errors(browser) == []


def test_job_page_explains_why_not_each_cluster_and_follows_the_job(
    browser: WebDriver, service: ServiceProcess, api: DispatcherClient, stack: Stack
) -> None:
    marker = f"console-log-{uuid.uuid4().hex[:8]}"
    job, _ = api.submit(task("why-h100", gpus=4, model="H100", annotations=succeed("4s")))
    sign_in(browser, service)
    browser.get(f"{service.url}/ui/jobs/{job['id']}")
    browser.execute_script("window.consoleMark = 'still-here'")
    explained = rows_by(browser, "#explanation tbody tr", "cluster")
    assert set(explained) == set(CLUSTERS)
    # Why not the others, in the routing's own words: no H100 in a100's or plane's nodes.
    assert "H100" in explained["gpu-a100"], explained
    assert "H100" in explained["plane"], explained
    stack.append_container_log("gpu-h100", [marker])
    wait_for(browser, lambda d: marker in d.find_element(By.ID, "log").text)
    wait_for(browser, lambda d: d.find_element(By.ID, "state").text == "succeeded")
    # Finished: no more updates come, the page stays as it is.
    assert browser.find_element(By.ID, "cluster").text == "gpu-h100"
    assert "gpu-h100" in browser.find_element(By.ID, "attempts").text
    assert browser.execute_script("return window.consoleMark") == "still-here"
    assert console_errors(browser) == []


def test_clusters_and_queue_say_what_waits_for_what(
    browser: WebDriver, service: ServiceProcess, api: DispatcherClient
) -> None:
    # gpu-h100 has two nodes of 8 H100: two whole-node jobs fill it, a third must wait.
    running = [api.submit(task(f"fill-{n}", gpus=8, model="H100"))[0] for n in range(2)]
    waiting, _ = api.submit(task("waits-for-h100", gpus=8, model="H100"))
    try:
        for job in running:
            wait_for_state(api, job["id"], "running")
        sign_in(browser, service)
        browser.get(f"{service.url}/ui/queue")
        row = wait_for(
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, f'#queue tr[data-job="{waiting["id"]}"]'),
        )[0]
        assert "gpu-h100" in row.find_element(By.CSS_SELECTOR, ".waits").text
        assert "gpu:H100" in row.text
        # What fair share says it waits for, as the API says it.
        waits_for = api.get(waiting["id"])["queue"]["waiting_for"]
        assert waits_for
        assert waits_for in row.text
        browser.get(f"{service.url}/ui/clusters")
        rows = {
            r.get_attribute("data-cluster"): r
            for r in browser.find_elements(By.CSS_SELECTOR, "#clusters tbody tr")
        }
        assert set(rows) == set(CLUSTERS)
        h100 = rows["gpu-h100"]
        assert h100.find_element(By.CSS_SELECTOR, ".health").text == "up"
        assert "NVIDIA-H100-80GB-HBM3: 0 / 16" in h100.find_element(By.CSS_SELECTOR, ".gpus").text
        assert "gpu:H100: 1" in h100.find_element(By.CSS_SELECTOR, ".queue").text
        assert "NVIDIA-A100-SXM4-80GB: 32 / 32" in rows["gpu-a100"].text
        # gpu-h100's credential comes from Vault's Kubernetes secrets engine, with a TTL.
        assert "in " in h100.text
        assert console_errors(browser) == []
    finally:
        for job in [*running, waiting]:
            api.cancel(job["id"])


def wait_for_state(api: DispatcherClient, job_id: str, state: str) -> None:
    from tests.support import wait_until

    wait_until(lambda: api.get(job_id)["state"] == state, what=f"{job_id} {state}")


def test_a_cluster_whose_api_server_is_gone_shows_down_and_why(
    browser: WebDriver, service: ServiceProcess, stack: Stack
) -> None:
    sign_in(browser, service)

    def health() -> tuple[str, str]:
        browser.get(f"{service.url}/ui/clusters")
        row = browser.find_element(By.CSS_SELECTOR, '#clusters tr[data-cluster="gpu-a100"]')
        return (
            row.find_element(By.CSS_SELECTOR, ".health").text,
            row.find_element(By.CSS_SELECTOR, ".why").text,
        )

    assert health() == ("up", "")
    stack.stop_apiserver("gpu-a100")
    try:
        _, why = wait_for(browser, lambda _: (h := health())[0] == "down" and h, timeout=120)
        assert why, "a down cluster must say why"
        assert "connection refused or unreachable" in why, why
    finally:
        stack.start_apiserver("gpu-a100")
    assert console_errors(browser) == []


def test_live_update_streams_are_bounded_per_caller(service_factory: Any) -> None:
    svc = service_factory(console={"max_streams_per_client": 1})
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with (
        httpx.Client(base_url=svc.url, headers=headers, timeout=10) as first,
        first.stream("GET", "/ui/events") as opened,
    ):
        assert opened.status_code == 200
        assert opened.headers["content-type"].startswith("text/event-stream")
        # Kept: a discarded iterator closes the response, which ends the stream.
        chunks = opened.iter_text()
        assert next(chunks).startswith("retry:")
        refused = httpx.get(f"{svc.url}/ui/events", headers=headers, timeout=10)
        assert refused.status_code == 429
        assert "service.console.max_streams_per_client" in refused.text
    # Closed, its slot is given back at once: the next stream is served.
    with httpx.stream("GET", f"{svc.url}/ui/events", headers=headers, timeout=10) as again:
        assert again.status_code == 200
