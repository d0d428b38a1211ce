"""The console in a real headless browser: the distribution's Chromium driven through
chromedriver by Selenium, against a ``dispatcher serve`` process on the test stack.

``make browser`` installs ``chromium`` and ``chromium-driver`` (Debian packages); without
them these tests fail saying so, they are never skipped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.e2e import conftest as e2e
from tests.support import ADMIN_TOKEN, ServiceProcess

service_factory = e2e.service_factory
service = e2e.service
api = e2e.api


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"{' or '.join(names)} is not installed: run `make browser` (apt-get install "
        "chromium chromium-driver)",
        pytrace=False,
    )


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    # Everything the page logs (errors included) is read back by the tests.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """What the page logged at error level since the last call (CSP violations included)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def sign_in(driver: webdriver.Chrome, svc: ServiceProcess, token: str = ADMIN_TOKEN) -> None:
    driver.get(f"{svc.url}/ui/sign-in")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 20).until(expected_conditions.url_contains("/ui/jobs"))


def wait_for(driver: webdriver.Chrome, condition: Any, timeout: float = 60) -> Any:
    # An element replaced by a live update between two calls is looked up again.
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.2,
        ignored_exceptions=[NoSuchElementException, StaleElementReferenceException],
    ).until(condition)
