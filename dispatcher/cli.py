"""The ``dispatcher`` command line; reads files and prints, nothing else.

``app`` is a typer app: add commands with ``@app.command()``. Commands never show a
traceback for bad input: they print what is wrong and exit with status 2 (1 for an
invalid configuration in ``validate-config``).

- ``dispatcher route --explain TASK.yaml --snapshot SNAPSHOT.yaml [--config CONFIG.yaml]``
  routes a task against a snapshot file, without any cluster, and explains every cluster.
- ``dispatcher validate-config PATH`` lists every problem of a settings file, or says OK.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from dispatcher.core import (
    Decision,
    RoutingPolicy,
    Verdict,
    parse_task_spec,
    route,
    snapshot_from_document,
)
from dispatcher.errors import DispatcherError, InputError, SnapshotError, SpecError
from dispatcher.settings import load_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="dispatcher",
    help="kube-dispatcher: route batch tasks to the right Kubernetes cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Exit status for input the command cannot use (bad file, bad spec, bad snapshot).
EXIT_BAD_INPUT = 2

_VERDICT_STYLE = {Verdict.PLACE: "green", Verdict.WAIT: "yellow", Verdict.REJECT: "red"}


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


def _fail(error: DispatcherError | str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    Console(stderr=True, highlight=False).print(f"error: {error}", markup=False)
    raise typer.Exit(status)


def _read_document(path: Path, error: type[InputError]) -> Any:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error.single("", f"cannot read the file: {exc.strerror}", source=source) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise error.single("", f"not valid YAML{where}: {problem}", source=source) from None


def _decision_table(decision: Decision) -> Table:
    table = Table(
        title=f"{decision.verdict.value.upper()}: {decision.message()}",
        title_justify="left",
        show_lines=False,
    )
    table.add_column("cluster", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    table.add_column("cost/h", justify="right", no_wrap=True)
    table.add_column("message", overflow="fold")
    for verdict in decision.clusters:
        style = _VERDICT_STYLE[verdict.verdict]
        chosen = verdict.cluster == decision.cluster
        cost = "" if verdict.hourly_cost is None else f"${verdict.hourly_cost:,.2f}"
        table.add_row(
            f"[bold]{verdict.cluster}[/bold]" if chosen else verdict.cluster,
            f"[{style}]{verdict.verdict.value}[/{style}]",
            verdict.reason.value,
            cost,
            verdict.message,
        )
    return table


@app.command("route")
def route_command(
    task: Annotated[Path, typer.Argument(help="Task spec (YAML or JSON), KPO field names.")],
    snapshot: Annotated[
        Path, typer.Option("--snapshot", help="Snapshot file: clusters with nodes and pods.")
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Settings file: cluster roles, labels, costs, pod defaults, routing policy.",
        ),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Explain every cluster in a table.")
    ] = False,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = (
        Output.TABLE
    ),
) -> None:
    """Route a task against a snapshot, without any cluster, and say why."""
    try:
        settings = load_settings(config) if config is not None else None
        spec = parse_task_spec(_read_document(task, SpecError), source=str(task))
        infos = settings.cluster_infos() if settings is not None else None
        state = snapshot_from_document(
            _read_document(snapshot, SnapshotError), infos=infos, source=str(snapshot)
        )
    except DispatcherError as exc:
        _fail(exc)
    policy = settings.routing if settings is not None else RoutingPolicy()
    decision = route(spec, state, policy)
    console = Console(highlight=False)
    if output is Output.JSON:
        console.print_json(json.dumps(decision.to_dict()))
    elif explain:
        console.print(_decision_table(decision))
    else:
        console.print(f"{decision.verdict.value}: {decision.message()}", markup=False)


@app.command("validate-config")
def validate_config_command(
    path: Annotated[Path, typer.Argument(help="Settings file (YAML).")],
) -> None:
    """Check a settings file (and DISPATCHER_* overrides): list every problem, or say OK."""
    try:
        load_settings(path)
    except DispatcherError as exc:
        _fail(exc, status=1)
    Console().print("OK", markup=False)


def main() -> None:
    """Entry point of the ``dispatcher`` console script."""
    app()


if __name__ == "__main__":
    main()
