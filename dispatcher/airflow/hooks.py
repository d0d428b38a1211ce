"""``DispatcherHook``: the dispatcher's HTTP API for Airflow, through a ``dispatcher``
connection.

Built on ``dispatcher.client.DispatcherClient`` (retries of transient failures, 503 +
Retry-After from a replica that is not the leader). The connection gives the URL, the
token (password, or a token file read again whenever it changes, so a rotated
ServiceAccount token is picked up mid-task), TLS verification, timeouts and retries; see
``dispatcher.airflow.connection``.

I/O: HTTP to the dispatcher.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from airflow.sdk import BaseHook

from dispatcher.airflow.connection import (
    ConnectionSettings,
    RotatingToken,
    settings_from_connection,
)
from dispatcher.airflow.provider import (
    CONN_TYPE,
    CONNECTION_FIELDS,
    DEFAULT_CONN_ID,
    UI_FIELD_BEHAVIOUR,
)
from dispatcher.client import ApiClientError, DispatcherClient

__all__ = ["DispatcherHook", "settings_for"]


def settings_for(conn: Any) -> ConnectionSettings:
    """Client settings from an Airflow ``Connection``."""
    return settings_from_connection(
        conn_id=conn.conn_id,
        host=conn.host,
        schema=conn.schema,
        port=conn.port,
        password=conn.password,
        extra=conn.extra_dejson,
    )


class DispatcherHook(BaseHook):
    """Talks to kube-dispatcher: submit, get, find, wait, logs, cancel, acknowledge,
    explain, clusters.

    :param dispatcher_conn_id: a connection of type ``dispatcher``.
    """

    conn_name_attr = "dispatcher_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Kube Dispatcher"

    def __init__(self, dispatcher_conn_id: str = DEFAULT_CONN_ID) -> None:
        super().__init__()
        self.dispatcher_conn_id = dispatcher_conn_id
        self._settings: ConnectionSettings | None = None
        self._client: DispatcherClient | None = None

    # ----- connection -----------------------------------------------------------------
    @property
    def settings(self) -> ConnectionSettings:
        if self._settings is None:
            self._settings = settings_for(self.get_connection(self.dispatcher_conn_id))
        return self._settings

    def get_conn(self) -> DispatcherClient:
        """The hook's client."""
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self) -> DispatcherClient:
        """A client of its own (for another thread, or a signal handler), from the
        settings already read: no connection lookup."""
        settings = self.settings
        if settings.token.token is None and settings.token.path:
            # An unreadable token file fails here, not mid-task.
            RotatingToken(settings.token).get()
        return DispatcherClient(
            settings.base_url,
            token=settings.token.token,
            token_file=settings.token.path,
            verify=settings.verify,
            timeout=settings.timeout,
            retries=settings.retries,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> DispatcherHook:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ----- API ------------------------------------------------------------------------
    def submit(self, task: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Submit a task spec; ``(job, created)``: the same idempotency key yields the
        same job with ``created`` False."""
        return self.get_conn().submit(dict(task))

    def get(self, job_id: str) -> dict[str, Any]:
        return self.get_conn().get(job_id)

    def find(self, idempotency_key: str) -> dict[str, Any] | None:
        """The job submitted with this idempotency key, if the dispatcher still has it."""
        return self.get_conn().find(idempotency_key)

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Long poll: the job once finished, or as it is after ``timeout`` seconds
        (the connection's ``wait_timeout`` by default)."""
        return self.get_conn().wait(
            job_id, self.settings.wait_timeout if timeout is None else timeout
        )

    def logs(
        self, job_id: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> Iterator[str]:
        """The job's container log, line by line; ``follow`` streams as it is written."""
        return self.get_conn().logs(job_id, follow=follow, tail_lines=tail_lines)

    def xcom(self, job_id: str) -> Any:
        """What the succeeded job wrote to ``/airflow/xcom/return.json``."""
        return self.get_conn().xcom(job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.get_conn().cancel(job_id)

    def acknowledge(self, job_id: str) -> None:
        """The outcome was read: the dispatcher may forget the job."""
        self.get_conn().acknowledge(job_id)

    def explain(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """Dry run: where the task would go, and why every other cluster would not do."""
        return self.get_conn().explain(dict(task))

    def clusters(self) -> list[dict[str, Any]]:
        return self.get_conn().clusters()

    def test_connection(self) -> tuple[bool, str]:
        """For the connection form's Test button."""
        try:
            clusters = self.clusters()
        except (ApiClientError, ValueError) as exc:
            return False, str(exc)
        names = ", ".join(sorted(str(c.get("name")) for c in clusters)) or "none"
        return True, f"Reached kube-dispatcher; clusters: {names}"

    # ----- connection form (Airflow < 3.2; newer versions read the provider info) ------
    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        # wtforms and Flask-AppBuilder come with the FAB-based UI of older Airflow
        # versions; they are imported by name so that nothing else needs them.
        fields = importlib.import_module("wtforms")
        widgets = importlib.import_module("flask_appbuilder.fieldwidgets")
        kinds = {
            "string": fields.StringField,
            "boolean": fields.BooleanField,
            "integer": fields.IntegerField,
            "number": fields.StringField,
        }
        out: dict[str, Any] = {}
        for field in CONNECTION_FIELDS:
            kwargs: dict[str, Any] = {"description": field.description, "default": field.default}
            if field.kind != "boolean":
                kwargs["widget"] = widgets.BS3TextFieldWidget()
            out[field.name] = kinds[field.kind](field.label, **kwargs)
        return out

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden_fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }
