"""The ``dispatcher`` command line; reads files and prints, nothing else.

``app`` is a typer app: add commands with ``@app.command()``. Commands never show a
traceback for bad input: they print what is wrong and exit with status 2 (1 for an
invalid configuration in ``validate-config``).

- ``dispatcher route --explain TASK.yaml --snapshot SNAPSHOT.yaml [--config CONFIG.yaml]``
  routes a task against a snapshot file, without any cluster, and explains every cluster.
- ``dispatcher validate-config PATH`` lists every problem of a settings file, or says OK.
- ``dispatcher airflow check DAG_FOLDER`` says what each KubernetesPodOperator task
  becomes with DispatcherPodOperator (``dispatcher.airflow.check``); exit status 1 when a
  parameter is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dispatcher.client import ApiClientError, DispatcherClient
from dispatcher.core import (
    Decision,
    RoutingPolicy,
    Verdict,
    parse_task_spec,
    route,
    snapshot_from_document,
)
from dispatcher.core.dependencies import DependencyReport
from dispatcher.errors import DispatcherError, InputError, SnapshotError, SpecError
from dispatcher.settings import CONFIG_ENV, load_settings

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
    checked = any(v.dependencies is not None for v in decision.clusters)
    if checked:
        table.add_column("dependencies", overflow="fold")
    for verdict in decision.clusters:
        style = _VERDICT_STYLE[verdict.verdict]
        chosen = verdict.cluster == decision.cluster
        cost = "" if verdict.hourly_cost is None else f"${verdict.hourly_cost:,.2f}"
        cells = [
            f"[bold]{verdict.cluster}[/bold]" if chosen else verdict.cluster,
            f"[{style}]{verdict.verdict.value}[/{style}]",
            verdict.reason.value,
            cost,
            escape(verdict.message),
        ]
        if checked:
            cells.append(escape(_dependency_cell(verdict.dependencies)))
        table.add_row(*cells)
    return table


def _dependency_cell(report: DependencyReport | None) -> str:
    """``present: Secret db key password; missing: PersistentVolumeClaim data (...)``."""
    if report is None:
        return "not checked"
    parts = []
    present = sorted({r.describe() for r in report.present})
    if present:
        parts.append("present: " + ", ".join(present))
    if report.would_copy:
        parts.append(
            "would be copied: "
            + ", ".join(sorted({f"{r.describe()} ({why})" for r, why in report.would_copy}))
        )
    if report.missing:
        parts.append("missing: " + ", ".join(sorted({r.describe() for r, _ in report.missing})))
    if report.unknown:
        parts.append("unknown: " + ", ".join(sorted({r.describe() for r, _ in report.unknown})))
    return f"in {report.namespace}: " + "; ".join(parts)


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


_SERVER = typer.Option(
    "--server", envvar="DISPATCHER_URL", help="The dispatcher's URL (env DISPATCHER_URL)."
)
_TOKEN = typer.Option("--token", envvar="DISPATCHER_TOKEN", help="API bearer token.")
_TOKEN_FILE = typer.Option(
    "--token-file",
    envvar="DISPATCHER_TOKEN_FILE",
    help="A file holding the API bearer token (e.g. a projected ServiceAccount token), "
    "read again when it changes.",
)
_STATE_STYLE = {
    "succeeded": "green",
    "running": "cyan",
    "pending": "yellow",
    "launching": "yellow",
    "queued": "yellow",
    "moving": "yellow",
    "cancelling": "magenta",
    "failed": "red",
    "rejected": "red",
    "cancelled": "magenta",
}


def _client(server: str, token: str | None, token_file: Path | None = None) -> DispatcherClient:
    if token and token_file is not None:
        _fail("give --token or --token-file, not both")
    if token_file is not None:
        try:
            readable = bool(token_file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            _fail(f"cannot read the token file {token_file}: {exc.strerror}")
        if not readable:
            _fail(f"the token file {token_file} is empty")
    path = str(token_file) if token_file is not None else None
    return DispatcherClient(server, token=token, token_file=path, retries=2)


def _api_fail(exc: ApiClientError) -> NoReturn:
    _fail(str(exc), status=1)


def jobs_table(jobs: list[dict[str, Any]], *, title: str | None = None, ids: bool = True) -> Table:
    """Jobs as a table (also used by the demo's live view)."""
    table = Table(show_lines=False, title=title, title_justify="left")
    columns = ("job", "name", "state", "cluster", "attempts", "reason / message")
    for column in columns if ids else columns[1:]:
        table.add_column(column, overflow="fold")
    for job in jobs:
        style = _STATE_STYLE.get(job["state"], "white")
        table.add_row(
            *([job["id"]] if ids else []),
            job.get("name") or "",
            f"[{style}]{job['state']}[/{style}]",
            job.get("cluster") or "",
            str(job.get("attempts", 0)),
            job.get("message") or job.get("reason") or "",
        )
    return table


@app.command("serve")
def serve_command(
    config: Annotated[
        Path | None, typer.Option("--config", help="Settings file (else $DISPATCHER_CONFIG).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Run the dispatcher service (HTTP API, informers, dispatch loop)."""
    try:
        settings = load_settings(config)
    except DispatcherError as exc:
        _fail(exc, status=1)
    # Imported here: the service pulls in uvicorn and the Kubernetes client, which the
    # other commands do not need.
    from dispatcher.api.service import serve  # noqa: PLC0415

    path = config if config is not None else os.environ.get(CONFIG_ENV) or None
    serve(settings, host=host, port=port, settings_path=path)


@app.command("submit")
def submit_command(
    task: Annotated[Path, typer.Argument(help="Task spec (YAML or JSON), KPO field names.")],
    server: Annotated[str, _SERVER] = "http://127.0.0.1:8080",
    token: Annotated[str | None, _TOKEN] = None,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to finish.")] = False,
) -> None:
    """Submit a task; prints the job (the same idempotency key returns the same job)."""
    try:
        spec = parse_task_spec(_read_document(task, SpecError), source=str(task))
    except DispatcherError as exc:
        _fail(exc)
    console = Console(highlight=False)
    with _client(server, token, token_file) as client:
        try:
            job, created = client.submit(spec.model_dump(mode="json", exclude_defaults=True))
            console.print(("submitted " if created else "already submitted ") + job["id"])
            while wait and job["state"] not in ("succeeded", "failed", "cancelled", "rejected"):
                job = client.wait(job["id"], timeout=60)
        except ApiClientError as exc:
            _api_fail(exc)
    console.print(jobs_table([job]))
    if job["state"] in ("failed", "rejected"):
        raise typer.Exit(1)


@app.command("status")
def status_command(  # noqa: PLR0917 - typer maps parameters to options
    job_id: Annotated[str | None, typer.Argument(help="A job id; all jobs when left out.")] = None,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    cluster: Annotated[str | None, typer.Option(help="Only jobs on this cluster.")] = None,
    server: Annotated[str, _SERVER] = "http://127.0.0.1:8080",
    token: Annotated[str | None, _TOKEN] = None,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.TABLE,
) -> None:
    """Show one job or a filtered list of jobs."""
    with _client(server, token, token_file) as client:
        try:
            jobs = [client.get(job_id)] if job_id else client.jobs(state=state, cluster=cluster)
        except ApiClientError as exc:
            _api_fail(exc)
    console = Console(highlight=False)
    if output is Output.JSON:
        console.print_json(json.dumps(jobs))
    else:
        console.print(jobs_table(jobs))


def queue_table(jobs: list[dict[str, Any]]) -> Table:
    """Waiting jobs in the dispatcher's order, with where each stands and what it waits for."""
    table = Table(show_lines=False, title_justify="left")
    for column in ("#", "job", "name", "tenant", "pool", "ahead in tenant", "waits for"):
        table.add_column(column, overflow="fold")
    ordered = sorted(
        (job for job in jobs if job.get("queue")),
        key=lambda job: (job["queue"]["ahead"], job["submitted_at"]),
    )
    for job in ordered:
        queue = job["queue"]
        waits = queue["waiting_for"]
        if queue.get("reservation"):
            reserved = queue["reservation"]
            waits += f"; node {reserved['node']} on {reserved['cluster']} reserved for it"
        table.add_row(
            str(queue["ahead"] + 1),
            job["id"],
            job.get("name") or "",
            queue["tenant"],
            f"{queue['pool']} (#{queue['ahead_in_pool'] + 1})",
            str(queue["ahead_in_tenant"]),
            waits,
        )
    return table


@app.command("queue")
def queue_command(
    server: Annotated[str, _SERVER] = "http://127.0.0.1:8080",
    token: Annotated[str | None, _TOKEN] = None,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.TABLE,
) -> None:
    """Show the waiting jobs you may see, in the order they will run, and what each waits for."""
    with _client(server, token, token_file) as client:
        try:
            jobs = client.jobs(state="queued")
        except ApiClientError as exc:
            _api_fail(exc)
    console = Console(highlight=False)
    if output is Output.JSON:
        console.print_json(json.dumps([{"id": j["id"], "queue": j.get("queue")} for j in jobs]))
    else:
        console.print(queue_table(jobs))


@app.command("logs")
def logs_command(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new lines.")] = False,
    server: Annotated[str, _SERVER] = "http://127.0.0.1:8080",
    token: Annotated[str | None, _TOKEN] = None,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
) -> None:
    """Print a job's container log."""
    with _client(server, token, token_file) as client:
        try:
            for line in client.logs(job_id, follow=follow):
                typer.echo(line)
        except ApiClientError as exc:
            _api_fail(exc)


@app.command("cancel")
def cancel_command(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    server: Annotated[str, _SERVER] = "http://127.0.0.1:8080",
    token: Annotated[str | None, _TOKEN] = None,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
) -> None:
    """Cancel a job: its pod is deleted wherever it runs."""
    with _client(server, token, token_file) as client:
        try:
            job = client.cancel(job_id)
        except ApiClientError as exc:
            _api_fail(exc)
    Console(highlight=False).print(jobs_table([job]))


@app.command("clusters")
def clusters_command(
    server: Annotated[str, _SERVER] = "http://127.0.0.1:8080",
    token: Annotated[str | None, _TOKEN] = None,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
) -> None:
    """Cluster health, capacity and free GPUs by model."""
    with _client(server, token, token_file) as client:
        try:
            clusters = client.clusters()
        except ApiClientError as exc:
            _api_fail(exc)
    Console(highlight=False).print(clusters_table(clusters))


def _health_words(cluster: dict[str, Any]) -> str:
    refusal = cluster.get("refusal")
    if not refusal:
        return str(cluster["health"])
    return f"{cluster['health']}: {refusal['reason']}\n{escape(refusal['message'])}"


def clusters_table(clusters: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("cluster", "role", "health", "nodes", "CPU free/total", "GPUs free/total"):
        table.add_column(column)
    health_style = {"up": "green", "degraded": "yellow", "down": "red", "refused": "red"}
    for c in clusters:
        style = health_style.get(c["health"], "white")
        gpus = ", ".join(f"{g['free']}/{g['allocatable']} {g['model']}" for g in c["gpus"]) or "-"
        table.add_row(
            c["name"],
            c["role"],
            f"[{style}]{_health_words(c)}[/{style}]",
            str(c["nodes"]),
            f"{c['cpu_free']:g}/{c['cpu_allocatable']:g}",
            gpus,
        )
    return table


airflow_app = typer.Typer(
    name="airflow", help="Moving Airflow DAGs to kube-dispatcher.", no_args_is_help=True
)
app.add_typer(airflow_app)


@airflow_app.command("check")
def airflow_check_command(
    dag_folder: Annotated[Path, typer.Argument(help="A DAG folder or one DAG file.")],
) -> None:
    """Parse every DAG and, for each KubernetesPodOperator or DispatcherPodOperator task,
    say what carries over, what becomes a routing hint and what is refused, and why.
    Exit status 1 when anything is refused."""
    # In a process of its own: this one stays free of Airflow and of what DAG files do
    # when they are executed.
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "dispatcher.airflow.check", str(dag_folder)], check=False
    )
    raise typer.Exit(done.returncode)


def main() -> None:
    """Entry point of the ``dispatcher`` console script."""
    app()


if __name__ == "__main__":
    main()
