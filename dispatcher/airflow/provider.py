"""What Airflow learns about this package before importing any of it; pure data, no I/O.

``get_provider_info`` is the ``apache_airflow_provider`` entry point: it registers the
``dispatcher`` connection type with its hook, so the type appears in Airflow's connection
form, and the ``@task.dispatcher`` and ``@task.dispatcher_cmd`` decorators
(``TASK_DECORATORS``). The form's extra fields are declared here once
(``CONNECTION_FIELDS``); Airflow 3.2+ reads them from the provider info, older 3.x
versions from the hook's ``get_connection_form_widgets``, which is built from the same
table.

Nothing here imports Airflow: the providers manager loads this module while it starts up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CONNECTION_FIELDS",
    "CONN_TYPE",
    "DEFAULT_CONN_ID",
    "EXTRA_LINKS",
    "HOOK_CLASS",
    "TASK_DECORATORS",
    "UI_FIELD_BEHAVIOUR",
    "ConnectionField",
    "get_provider_info",
]

CONN_TYPE = "dispatcher"
DEFAULT_CONN_ID = "dispatcher_default"
HOOK_CLASS = "dispatcher.airflow.hooks.DispatcherHook"
#: ``@task.<name>`` -> the decorator factory that makes it.
TASK_DECORATORS = {
    "dispatcher": "dispatcher.airflow.decorators.dispatcher_task",
    "dispatcher_cmd": "dispatcher.airflow.decorators.dispatcher_cmd_task",
}
_PACKAGE = "kube-dispatcher"
_INTEGRATION = "Kube Dispatcher"


@dataclass(frozen=True, slots=True)
class ConnectionField:
    """One extra field of the ``dispatcher`` connection form (stored in ``extra``)."""

    name: str
    label: str
    kind: Literal["string", "boolean", "integer", "number"]
    description: str
    default: Any = None

    def conn_field(self) -> dict[str, Any]:
        """The field as Airflow's declarative ``conn-fields`` entry (JSON schema)."""
        schema: dict[str, Any] = {"type": [self.kind, "null"]}
        if self.default is not None:
            schema["default"] = self.default
        return {"label": self.label, "schema": schema, "description": self.description}


CONNECTION_FIELDS = (
    ConnectionField(
        "token_file",
        "Token file",
        "string",
        "A file holding the API token, re-read when it changes (a projected "
        "ServiceAccount token). Used when Password is empty.",
    ),
    ConnectionField(
        "verify",
        "Verify TLS",
        "boolean",
        "Check the dispatcher's certificate. Turn off only for local testing.",
        True,
    ),
    ConnectionField(
        "ca_file",
        "CA bundle file",
        "string",
        "PEM file of the CA that signed the dispatcher's certificate (default: system CAs).",
    ),
    ConnectionField("timeout", "Request timeout (s)", "number", "Timeout of one HTTP request.", 30),
    ConnectionField(
        "wait_timeout",
        "Long-poll wait (s)",
        "integer",
        "How long one wait request may be held by the dispatcher (at most 300).",
        60,
    ),
    ConnectionField(
        "retries",
        "Retries",
        "integer",
        "Retries of transient failures (unreachable, 502/503/504, not the leader).",
        5,
    ),
    ConnectionField(
        "console_url",
        "Console URL",
        "string",
        "Where people reach the dispatcher (its console is at /ui), for the task's "
        "'Dispatcher job' link. Default: the Dispatcher URL.",
    ),
    ConnectionField(
        "grafana_url",
        "Grafana dashboard URL",
        "string",
        "The kube-dispatcher dashboard, for the task's 'Grafana (cluster)' link "
        "(filtered to the job's cluster). No link without it.",
    ),
)

#: The operators' extra links (``dispatcher.airflow.links``).
EXTRA_LINKS = (
    "dispatcher.airflow.links.DispatcherConsoleLink",
    "dispatcher.airflow.links.GrafanaClusterLink",
)

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "login", "port"],
    "relabeling": {"host": "Dispatcher URL", "password": "API token"},
    "placeholders": {
        "host": "https://kube-dispatcher.platform.svc:8080",
        "password": "bearer token (or leave empty and set a token file)",
        "token_file": "/var/run/secrets/tokens/kube-dispatcher",
        "ca_file": "/etc/ssl/certs/kube-dispatcher-ca.pem",
    },
}


def get_provider_info() -> dict[str, Any]:
    """Airflow's provider entry point (``apache_airflow_provider``)."""
    return {
        "package-name": _PACKAGE,
        "name": _INTEGRATION,
        "description": "Runs Kubernetes pod tasks on the cluster kube-dispatcher routes them to.",
        "integrations": [
            {"integration-name": _INTEGRATION, "tags": ["service"]},
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["dispatcher.airflow.operators", "dispatcher.airflow.job"],
            }
        ],
        "hooks": [
            {"integration-name": _INTEGRATION, "python-modules": ["dispatcher.airflow.hooks"]}
        ],
        "triggers": [
            {"integration-name": _INTEGRATION, "python-modules": ["dispatcher.airflow.triggers"]}
        ],
        "extra-links": list(EXTRA_LINKS),
        "task-decorators": [
            {"name": name, "class-name": factory} for name, factory in TASK_DECORATORS.items()
        ],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": HOOK_CLASS,
                "hook-name": _INTEGRATION,
                "conn-fields": {f.name: f.conn_field() for f in CONNECTION_FIELDS},
                "ui-field-behaviour": {
                    "hidden-fields": UI_FIELD_BEHAVIOUR["hidden_fields"],
                    "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
                    "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
                },
            }
        ],
    }
