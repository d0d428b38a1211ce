"""Airflow stays an optional extra: nothing outside ``dispatcher.airflow`` imports it,
the package works without it, and ``dispatcher.airflow`` uses only Airflow's public API."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dispatcher.airflow

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "dispatcher"

#: Airflow's public interface for providers (Airflow 3): the task SDK (with the base of
#: task decorators, as the cncf.kubernetes provider's @task.kubernetes uses it), the
#: exceptions and the trigger base classes.
PUBLIC_AIRFLOW = {
    "airflow.sdk",
    "airflow.sdk.bases.decorator",
    "airflow.sdk.exceptions",
    "airflow.exceptions",
    "airflow.triggers.base",
}

BLOCK_AIRFLOW = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoAirflow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "airflow" or name.startswith("airflow."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoAirflow())
    """
)


def airflow_imports(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            modules.add(str(node.args[0].value))
    return {m for m in modules if m == "airflow" or m.startswith("airflow.")}


def test_only_dispatcher_airflow_imports_airflow() -> None:
    importing = {
        str(path.relative_to(REPO)) for path in PACKAGE.rglob("*.py") if airflow_imports(path)
    }
    assert importing
    assert all(path.startswith("dispatcher/airflow/") for path in importing), importing


def test_dispatcher_airflow_uses_only_public_airflow_modules() -> None:
    used = set().union(*(airflow_imports(p) for p in (PACKAGE / "airflow").glob("*.py")))
    assert used <= PUBLIC_AIRFLOW, used - PUBLIC_AIRFLOW


def test_the_examples_use_only_the_task_sdk() -> None:
    used = set().union(*(airflow_imports(p) for p in (REPO / "examples").glob("*.py")))
    assert used == {"airflow.sdk"}


def test_the_package_imports_and_runs_without_airflow() -> None:
    script = BLOCK_AIRFLOW + textwrap.dedent(
        """
        import dispatcher, dispatcher.core, dispatcher.client, dispatcher.cli, dispatcher.api.app
        # The Airflow package's pure parts work without Airflow too.
        import dispatcher.airflow.parameters, dispatcher.airflow.progress
        from dispatcher.airflow import get_provider_info
        assert get_provider_info()["connection-types"][0]["connection-type"] == "dispatcher"
        try:
            from dispatcher.airflow import DispatcherPodOperator
        except ModuleNotFoundError as exc:
            assert exc.name.startswith("airflow"), exc
        else:
            raise AssertionError("the operator imported without Airflow")
        assert not [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]
        from typer.testing import CliRunner
        assert CliRunner().invoke(dispatcher.cli.app, ["--help"]).exit_code == 0
        print("ok")
        """
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_the_public_names_are_the_documented_ones() -> None:
    assert set(dispatcher.airflow.__all__) == {
        "DispatcherHook",
        "DispatcherJobFailed",
        "DispatcherJobOperator",
        "DispatcherJobTrigger",
        "DispatcherPodOperator",
        "Secret",
        "get_provider_info",
    }
    for name in dispatcher.airflow.__all__:
        assert getattr(dispatcher.airflow, name).__name__ == name
