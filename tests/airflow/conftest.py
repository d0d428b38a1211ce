"""Airflow tests: a throw-away ``AIRFLOW_HOME`` (SQLite metadata DB, its own dags folder)
and DAG runs with ``dag.test()`` against a real dispatcher process on the test stack.

Airflow reads its configuration when first imported, so the environment is set here,
before any test module imports it. A DAG run happens in a subprocess
(``tests.airflow.dagrun``): its stdout is the task log, as a worker would write it, and
it can be killed like a worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import conftest as e2e
from tests.support import ADMIN_TOKEN, ServiceProcess

# The end-to-end suite's fixtures: a `dispatcher serve` process on the stack, with its
# own task namespace.
service_factory = e2e.service_factory
service = e2e.service
api = e2e.api

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TEST_DAGS = Path(__file__).resolve().parent / "dags"

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="kd-airflow-home-"))
DAGS_FOLDER = AIRFLOW_HOME / "dags"
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
    }
)

SUMMARY = "DAGRUN-SUMMARY "
#: Annotations that make a simulated pod on the test stack succeed or fail.
SIM = "sim.dispatcher.dev/"


def succeed(after: str = "2s", result: str | None = None) -> dict[str, str]:
    annotations = {f"{SIM}succeed-after": after}
    if result is not None:
        annotations[f"{SIM}termination-message"] = result
    return annotations


def fail(after: str = "2s", exit_code: int = 1, reason: str | None = None) -> dict[str, str]:
    annotations = {f"{SIM}fail-after": after, f"{SIM}exit-code": str(exit_code)}
    if reason:
        annotations[f"{SIM}reason"] = reason
    return annotations


@pytest.fixture(scope="session", autouse=True)
def _airflow_home() -> Iterator[Path]:
    DAGS_FOLDER.mkdir(parents=True, exist_ok=True)
    yield AIRFLOW_HOME
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_db(_airflow_home: Path) -> Path:
    """A migrated SQLite metadata DB (a few seconds, once per session)."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout}\n{done.stderr}"
    return _airflow_home


@dataclass
class DagRunResult:
    returncode: int
    log: str
    summary: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.summary.get("state"))

    def task(self, task_id: str, map_index: int = -1) -> dict[str, Any]:
        for ti in self.summary.get("tasks", []):
            if ti["task_id"] == task_id and ti["map_index"] == map_index:
                return dict(ti)
        raise AssertionError(f"no task instance {task_id}[{map_index}] in {self.summary}")

    def xcom(self, task_id: str, map_index: int = -1) -> Any:
        return self.summary.get("xcom", {}).get(f"{task_id}[{map_index}]")

    def lines(self, containing: str) -> list[str]:
        return [line for line in self.log.splitlines() if containing in line]


class DagRunner:
    """Runs DAG files from the examples or the test DAGs with ``dag.test()``."""

    def __init__(
        self, service: ServiceProcess, workdir: Path, auth: dict[str, Any] | None = None
    ) -> None:
        self.service = service
        self.workdir = workdir
        #: How the connection authenticates: the admin tenant's token by default, or e.g.
        #: ``{"extra": {"token_file": ...}}`` for a projected ServiceAccount token.
        self.auth = auth if auth is not None else {"password": ADMIN_TOKEN}

    def env(self) -> dict[str, str]:
        extra = {"retries": 3, **self.auth.get("extra", {})}
        conn = {
            "conn_type": "dispatcher",
            "host": self.service.url,
            **{k: v for k, v in self.auth.items() if k != "extra"},
            "extra": extra,
        }
        return {
            **os.environ,
            "AIRFLOW_CONN_DISPATCHER_DEFAULT": json.dumps(conn),
            "PYTHONUNBUFFERED": "1",
        }

    def command(
        self,
        dag_file: Path,
        dag_id: str,
        *,
        annotate: dict[str, dict[str, str]] | None = None,
        logical_date: datetime | None = None,
    ) -> list[str]:
        installed = DAGS_FOLDER / dag_file.name
        shutil.copy(dag_file, installed)
        command = [sys.executable, "-m", "tests.airflow.dagrun", str(installed), dag_id]
        for task_id, extra in (annotate or {}).items():
            command += ["--annotate", f"{task_id}={json.dumps(extra)}"]
        if logical_date is not None:
            command += ["--logical-date", logical_date.isoformat()]
        return command

    def run(
        self,
        dag_file: Path,
        dag_id: str,
        *,
        annotate: dict[str, dict[str, str]] | None = None,
        logical_date: datetime | None = None,
        timeout: float = 240,
    ) -> DagRunResult:
        done = subprocess.run(  # noqa: S603 - our own interpreter and helper
            self.command(dag_file, dag_id, annotate=annotate, logical_date=logical_date),
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        (self.workdir / f"{dag_id}-{time.monotonic_ns()}.log").write_text(output)
        return self._result(done.returncode, output, dag_id)

    def start(
        self,
        dag_file: Path,
        dag_id: str,
        *,
        annotate: dict[str, dict[str, str]] | None = None,
        logical_date: datetime | None = None,
    ) -> tuple[subprocess.Popen[str], Path]:
        """Start a run in the background (to kill it like a worker); output to a file."""
        log = self.workdir / f"{dag_id}-{time.monotonic_ns()}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and helper
                self.command(dag_file, dag_id, annotate=annotate, logical_date=logical_date),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
                env=self.env(),
            )
        return proc, log

    @staticmethod
    def _result(returncode: int, output: str, dag_id: str) -> DagRunResult:
        summary: dict[str, Any] = {}
        for line in output.splitlines():
            if line.startswith(SUMMARY):
                summary = json.loads(line[len(SUMMARY) :])
        assert summary, f"the run of {dag_id} printed no summary (exit {returncode}):\n{output}"
        return DagRunResult(returncode, output, summary)


#: The Secrets (with their keys) and ConfigMaps the test DAGs name, as a DAG author's
#: namespace holds them: routing sends a task only where what its pod names exists.
DAG_SECRETS = {
    "warehouse-db": {"password": "example"},  # dags/decorated.py
    "registry-credentials": {".dockerconfigjson": "{}"},  # dags/kpo_seed.py
    "airflow-secrets": {"sql_alchemy_conn": "postgresql://example"},  # dags/kpo_example.py
    "airflow-secrets-2": {"extra": "x"},  # dags/kpo_example.py
}
DAG_CONFIG_MAPS = {
    "loader-config": {"mode": "test"},  # dags/templated_models.py
    "test-configmap-1": {"mode": "test"},  # dags/kpo_example.py
}


@pytest.fixture
def dag_objects(stack: Any, namespace: str) -> None:
    """``DAG_SECRETS`` and ``DAG_CONFIG_MAPS`` in ``namespace`` on every cluster."""
    from kubernetes import client

    for cluster in ("plane", "gpu-a100", "gpu-h100"):
        with stack.kube(cluster) as kube:
            core = client.CoreV1Api(kube)
            for name, data in DAG_SECRETS.items():
                core.create_namespaced_secret(
                    namespace, {"metadata": {"name": name}, "stringData": data}
                )
            for name, data in DAG_CONFIG_MAPS.items():
                core.create_namespaced_config_map(
                    namespace, {"metadata": {"name": name}, "data": data}
                )


@pytest.fixture
def dag_runner(
    airflow_db: Path, service: ServiceProcess, dag_objects: None, tmp_path: Path
) -> Iterator[DagRunner]:
    yield DagRunner(service, tmp_path)
    # A followed log stream whose client is gone keeps a thread of the service blocked
    # until the cluster writes another line, which KWOK's simulated log never does, so a
    # graceful stop would wait out its 15 s. Graceful shutdown is not under test here.
    service.stop(timeout=2)


@pytest.fixture
def logical_date() -> Callable[[], datetime]:
    """A fresh logical date per call (a run id nobody else uses)."""

    def make() -> datetime:
        return datetime.now(UTC).replace(microsecond=0)

    return make
