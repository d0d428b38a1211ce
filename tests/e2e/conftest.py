"""The dispatcher service as a real process (``dispatcher serve``) against the test stack."""

from __future__ import annotations

import os
import signal
import socket
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

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """One ``dispatcher serve`` process; can be killed with SIGKILL and started again."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

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

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 40) -> str:
        if not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

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
