"""``dispatcher airflow check DAG_FOLDER``: what each KubernetesPodOperator task of a DAG
folder becomes with ``DispatcherPodOperator``, before the import is changed.

    python -m dispatcher.airflow.check DAG_FOLDER    (what ``dispatcher airflow check`` runs)

Every DAG file of the folder is executed, as Airflow's DAG processor does, with the
cncf.kubernetes provider's ``KubernetesPodOperator`` and ``Secret`` standing for
``DispatcherPodOperator`` and ``dispatcher.airflow.Secret`` (installed or not: the check
shows what the swapped import gives). Each ``DispatcherPodOperator`` task (decorated and
mapped ones included) reports the parameters it was given, those set to other values
than their defaults (``operators.CHECKING``), and
each parameter is placed in its group of ``parameters`` (carried over, a pod field, a
routing hint, no effect, refused with why and what instead). The exit code is 1 when a
parameter is refused, a task's spec is invalid or a file does not parse.

I/O: reads and executes the DAG files; prints.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
import traceback
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.airflow import parameters

__all__ = ["CheckedFile", "CheckedTask", "Verdict", "check_folder", "classify", "main", "report"]

#: How each group of ``parameters`` reads in the report, in the report's order.
GROUP_LABELS = {
    "CARRIED_OVER": "carried over",
    "POD_FIELDS": "pod field",
    "ROUTING_HINTS": "routing hint",
    "NO_EFFECT": "no effect",
    "REFUSED": "refused",
}
#: Parameters of DispatcherPodOperator that KPO does not have.
OWN = "dispatcher"
#: A refused parameter whose value asks for nothing (its default).
NEUTRAL = "accepted"
#: The provider modules the check replaces (and their parents, if not installed).
_PROVIDER = "airflow.providers.cncf.kubernetes"
_STAND_INS = {
    f"{_PROVIDER}.operators.pod": ("KubernetesPodOperator",),
    f"{_PROVIDER}.operators.kubernetes_pod": ("KubernetesPodOperator",),
    f"{_PROVIDER}.operators.job": ("KubernetesJobOperator",),
    f"{_PROVIDER}.secret": ("Secret",),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of one parameter: its group's label and the details."""

    parameter: str
    group: str
    detail: str = ""

    @property
    def refused(self) -> bool:
        return self.group == GROUP_LABELS["REFUSED"]


@dataclass(frozen=True, slots=True)
class CheckedTask:
    dag_id: str | None
    task_id: str
    kind: str
    verdicts: tuple[Verdict, ...]
    #: The task spec's problem at parse time (invalid values), if any.
    problem: str | None = None

    @property
    def refused(self) -> bool:
        return self.problem is not None or any(v.refused for v in self.verdicts)


@dataclass
class CheckedFile:
    path: Path
    tasks: list[CheckedTask] = field(default_factory=list)
    #: Why the file did not parse.
    error: str | None = None


def _groups() -> dict[str, Any]:
    return {name: getattr(parameters, name) for name in GROUP_LABELS if hasattr(parameters, name)}


def _own_parameters() -> frozenset[str]:
    from dispatcher.airflow.operators import DispatcherPodOperator  # noqa: PLC0415

    grouped = set().union(*(set(group) for group in _groups().values()))
    named = set(inspect.signature(DispatcherPodOperator.__init__).parameters)
    return frozenset(named - grouped - {"self", "kwargs"})


def classify(name: str, value: Any, *, own: frozenset[str] = frozenset()) -> Verdict | None:
    """The verdict on one parameter a task was given; None for what is no KPO parameter
    and not the dispatcher's own (``task_id``, ``retries``: BaseOperator's)."""
    for group, members in _groups().items():
        if name not in members:
            continue
        label = GROUP_LABELS[group]
        if group == "REFUSED":
            refusal = members[name]
            if not refusal.applies_to(value):
                return Verdict(name, NEUTRAL, "its value asks for nothing")
            return Verdict(name, label, f"{refusal.why}; instead: {refusal.instead}")
        if group == "ROUTING_HINTS":
            return Verdict(
                name,
                label,
                f"{value!r} goes to requirements.cluster_hints, which the dispatcher's "
                "routing.airflow_connections maps to clusters (no credential is read)",
            )
        if group == "POD_FIELDS":
            spec_field = members[name]
            return Verdict(name, label, "" if spec_field == name else f"extends {spec_field}")
        if isinstance(members, Mapping):
            return Verdict(name, label, str(members[name]))
        return Verdict(name, label)
    if name in own:
        return Verdict(name, OWN)
    return None


def _report(given: Mapping[str, Any], own: frozenset[str]) -> tuple[Verdict, ...]:
    verdicts = (classify(name, value, own=own) for name, value in sorted(given.items()))
    return tuple(v for v in verdicts if v is not None)


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of the provider's operator and Secret give the dispatcher's; the
    provider's parent packages are empty stand-ins when it is not installed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in _STAND_INS:
            return importlib.util.spec_from_loader(fullname, self)
        if fullname in _parents():
            if importlib.machinery.PathFinder.find_spec(fullname, path) is not None:
                return None  # the provider is installed: its packages are real
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        from dispatcher.airflow.job import DispatcherJobOperator  # noqa: PLC0415
        from dispatcher.airflow.operators import DispatcherPodOperator  # noqa: PLC0415
        from dispatcher.airflow.secret import Secret  # noqa: PLC0415

        names = _STAND_INS.get(module.__name__, ())
        if "KubernetesPodOperator" in names:
            module.KubernetesPodOperator = type(  # type: ignore[attr-defined]
                "KubernetesPodOperator",
                (DispatcherPodOperator,),
                {"__module__": module.__name__, "__doc__": "DispatcherPodOperator, for the check"},
            )
        if "KubernetesJobOperator" in names:
            module.KubernetesJobOperator = type(  # type: ignore[attr-defined]
                "KubernetesJobOperator",
                (DispatcherJobOperator,),
                {"__module__": module.__name__, "__doc__": "DispatcherJobOperator, for the check"},
            )
        if "Secret" in names:
            module.Secret = Secret  # type: ignore[attr-defined]


def _parents() -> set[str]:
    parts = _PROVIDER.split(".")
    parents = {".".join(parts[:i]) for i in range(3, len(parts) + 1)}
    return parents | {f"{_PROVIDER}.operators"}


@contextmanager
def _stand_ins() -> Iterator[None]:
    finder = _StandIns()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def _dag_files(folder: Path) -> list[Path]:
    """Python files that may define DAGs (Airflow's safe-mode test: both words appear)."""
    files = [folder] if folder.is_file() else sorted(folder.rglob("*.py"))
    return [
        path
        for path in files
        if b"dag" in (text := path.read_bytes().lower()) and b"airflow" in text
    ]


def _check_file(path: Path, index: int, own: frozenset[str]) -> CheckedFile:
    from dispatcher.airflow.operators import CHECKING  # noqa: PLC0415

    checked = CheckedFile(path)

    def record(
        dag_id: str | None,
        task_id: str,
        kind: str,
        given: Mapping[str, Any],
        problem: str | None,
    ) -> None:
        checked.tasks.append(CheckedTask(dag_id, task_id, kind, _report(given, own), problem))

    spec = importlib.util.spec_from_file_location(f"dispatcher_check_{index}_{path.stem}", path)
    if spec is None or spec.loader is None:
        checked.error = "not a Python module"
        return checked
    module = importlib.util.module_from_spec(spec)
    token = CHECKING.set(record)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        checked.error = f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})"
    finally:
        CHECKING.reset(token)
    for dag_id, task_id, kind, given in _mapped_decorated_tasks(module):
        if not any((t.dag_id, t.task_id) == (dag_id, task_id) for t in checked.tasks):
            record(dag_id, task_id, kind, given, None)
    return checked


def _mapped_decorated_tasks(module: types.ModuleType) -> Iterator[tuple[str, str, str, Any]]:
    """Mapped tasks of the module's DAGs that build no operator while the DAG is parsed
    (``@task.dispatcher(...)`` functions ``.expand()``-ed): their partial arguments."""
    from airflow.sdk import DAG  # noqa: PLC0415

    from dispatcher.airflow.operators import DispatcherPodOperator  # noqa: PLC0415

    for dag in (v for v in vars(module).values() if isinstance(v, DAG)):
        for task in dag.tasks:
            cls = getattr(task, "operator_class", None)
            given = getattr(task, "partial_kwargs", None)
            if isinstance(cls, type) and issubclass(cls, DispatcherPodOperator) and given:
                kind = getattr(cls, "custom_operator_name", None) or cls.__name__
                yield dag.dag_id, task.task_id, f"{kind}, mapped", given


def check_folder(folder: Path) -> list[CheckedFile]:
    """Execute every DAG file under ``folder`` (or the one file) and check its tasks."""
    folder = folder.resolve()
    own = _own_parameters()
    # Airflow puts the DAG folder on sys.path, for DAG files that import their helpers.
    root = str(folder if folder.is_dir() else folder.parent)
    sys.path.insert(0, root)
    try:
        with _stand_ins():
            return [_check_file(p, i, own) for i, p in enumerate(_dag_files(folder))]
    finally:
        sys.path.remove(root)


def report(files: Sequence[CheckedFile], base: Path | None = None) -> Iterator[str]:
    """The report's lines: per file, per task, one line per group."""
    tasks = [task for checked in files for task in checked.tasks]
    for checked in files:
        shown = checked.path.relative_to(base) if base else checked.path
        if checked.error is None and not checked.tasks:
            continue
        yield str(shown)
        if checked.error is not None:
            yield f"  does not parse: {checked.error}"
        for task in checked.tasks:
            kind = task.kind
            if kind.startswith("KubernetesPodOperator"):
                kind += ", checked as DispatcherPodOperator"
            elif kind.startswith("KubernetesJobOperator"):
                kind += ", checked as DispatcherJobOperator"
            yield f"  {task.dag_id or '(no DAG)'}.{task.task_id} ({kind})"
            yield from _task_lines(task)
    refused = [t for t in tasks if t.refused]
    failed = [f for f in files if f.error is not None]
    yield (
        f"{len(files)} DAG files, {len(tasks)} dispatcher tasks: "
        f"{len(refused)} with refused parameters or an invalid spec, "
        f"{len(failed)} files that do not parse"
    )


def _task_lines(task: CheckedTask) -> Iterator[str]:
    """Group by group, refusals last: the parameters without details on one line, then
    one line for each other."""
    refused = GROUP_LABELS["REFUSED"]
    order = [*(g for g in GROUP_LABELS.values() if g != refused), OWN, NEUTRAL, refused]
    for group in order:
        verdicts = [v for v in task.verdicts if v.group == group]
        names = [v.parameter for v in verdicts if not v.detail]
        if names:
            yield f"    {group}: {', '.join(names)}"
        for verdict in verdicts:
            if verdict.detail:
                yield f"    {group}: {verdict.parameter}: {verdict.detail}"
    if task.problem is not None:
        yield "    invalid spec: " + task.problem.replace("\n", "\n      ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dispatcher airflow check",
        description="What each KubernetesPodOperator task of a DAG folder becomes with "
        "DispatcherPodOperator.",
    )
    parser.add_argument("dag_folder", type=Path, help="A DAG folder or one DAG file.")
    args = parser.parse_args(argv)
    folder: Path = args.dag_folder
    if not folder.exists():
        sys.stderr.write(f"no such DAG folder or file: {folder}\n")
        return 2
    try:
        files = check_folder(folder)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("airflow"):
            raise
        sys.stderr.write(
            f"the check parses DAGs with Airflow, which is not installed ({exc}): "
            "pip install 'kube-dispatcher[airflow]'\n"
        )
        return 2
    base = folder.resolve() if folder.is_dir() else folder.resolve().parent
    for line in report(files, base):
        sys.stdout.write(line + "\n")
    bad = any(f.error is not None or any(t.refused for t in f.tasks) for f in files)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
