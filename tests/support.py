"""Helpers shared by the end-to-end suites, the demo and the benchmarks: task specs,
waiting, local processes (``dispatcher serve`` among them).

I/O: waits on whatever the predicates read; ``LocalProcess`` runs a child process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dispatcher.client import DispatcherClient

FINISHED = ("succeeded", "failed", "cancelled", "rejected")

#: The bearer token of the ``admin`` tenant in the test stack's dispatcher settings
#: (``tests.stack.dispatcher_config``, where only its SHA-256 is written).
ADMIN_TOKEN = "kd-test-admin-token"
#: The ``Authorization`` header with ``ADMIN_TOKEN``.
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def task(name: str, *, gpus: int = 0, model: str | None = None, **extra: Any) -> dict[str, Any]:
    """A small task spec with a fresh idempotency key; ``extra`` sets any other field."""
    spec: dict[str, Any] = {
        "name": name,
        "image": "python:3.12",
        "cmds": ["python", "-c", "print('hello')"],
        "container_resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        "idempotency_key": f"{name}-{uuid.uuid4().hex}",
    }
    if gpus:
        spec["container_resources"]["limits"] = {"nvidia.com/gpu": str(gpus)}
    if model:
        spec["requirements"] = {"gpu_model": model}
    spec.update(extra)
    return spec


def succeed(after: str = "1s", message: str | None = None) -> dict[str, str]:
    """Annotations that make the simulated pod succeed after ``after``."""
    annotations = {"sim.dispatcher.dev/succeed-after": after}
    if message:
        annotations["sim.dispatcher.dev/termination-message"] = message
    return annotations


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 60,
    what: str = "condition",
    context: Callable[[], str] = lambda: "",
) -> Any:
    """``predicate()``'s first truthy value; fails after ``timeout`` with ``context()``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last: {last!r}){context()}"
    )


def finish(api: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """Long-poll a job (``DispatcherClient``) until it has finished."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = api.get(job_id)
    while job["state"] not in FINISHED and time.monotonic() < deadline:
        job = api.wait(job_id, timeout=min(10.0, max(0.1, deadline - time.monotonic())))
    assert job["state"] in FINISHED, f"job did not finish: {job}"
    return job


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalProcess:
    """A child process with its output in ``log``; stopped gently, then killed."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def stop(self, timeout: float = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 40) -> str:
        if not self.log.is_file():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


REPO = Path(__file__).resolve().parents[1]


class ServiceProcess(LocalProcess):
    """One ``dispatcher serve`` process; can be killed with SIGKILL and started again."""

    def __init__(self, config: Path, log: Path, repo: Path = REPO) -> None:
        super().__init__(log)
        self.config = config
        #: The code this process runs (this checkout, or another commit's worktree).
        self.repo = repo

    def env(self) -> dict[str, str]:
        """The process's environment; another ``repo``'s code comes first on its path."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.repo != REPO:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.repo), os.environ.get("PYTHONPATH")) if p
            )
        return env

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
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
                cwd=self.repo,
                env=self.env(),
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

    def client(self, token: str | None = ADMIN_TOKEN, retries: int = 3) -> DispatcherClient:
        """A client of this process, as the ``admin`` tenant unless ``token`` says otherwise."""
        return DispatcherClient(self.url, token=token, retries=retries)
