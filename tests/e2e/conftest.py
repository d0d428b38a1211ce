"""The dispatcher service as a real process (``dispatcher serve``) against the test stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.client import DispatcherClient
from tests.stack import Stack
from tests.stack.dispatcher_config import dispatcher_settings
from tests.support import LocalProcess

REPO = Path(__file__).resolve().parents[2]


class ServiceProcess(LocalProcess):
    """One ``dispatcher serve`` process; can be killed with SIGKILL and started again."""

    def __init__(self, config: Path, log: Path) -> None:
        super().__init__(log)
        self.config = config

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dispatcher.cli",
                    "serve",
                    "--config",
                    str(self.config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dispatcher exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=1)
            except httpx.TransportError:
                ready = None
            if ready is not None and ready.status_code == 200:
                return
            if ready is not None and ready.text.startswith("start failed"):
                raise AssertionError(f"dispatcher {ready.text}:\n{self.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"dispatcher not ready after {timeout}s:\n{self.tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def client(self) -> DispatcherClient:
        return DispatcherClient(self.url, retries=3)


@pytest.fixture
def service_factory(stack: Stack, namespace: str, tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def make(**service_settings: Any) -> ServiceProcess:
        config = dispatcher_settings(
            stack, tmp_path / f"svc{len(started)}", namespace=namespace, service=service_settings
        )
        svc = ServiceProcess(config, tmp_path / f"svc{len(started)}.log")
        svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


@pytest.fixture
def service(service_factory: Any) -> ServiceProcess:
    return service_factory()


@pytest.fixture
def api(service: ServiceProcess) -> Iterator[DispatcherClient]:
    with service.client() as client:
        yield client
