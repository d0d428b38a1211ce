"""The ``dispatcher`` connection type: what Airflow's connection form shows, how a
connection becomes client settings, and the hook reaching the dispatcher."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from dispatcher.airflow import DispatcherHook, get_provider_info
from dispatcher.airflow.connection import settings_from_connection
from dispatcher.airflow.provider import CONNECTION_FIELDS
from dispatcher.client import DispatcherClient
from tests.airflow.fake_dispatcher import BASE, FakeDispatcher, job_view

#: Depends on the cncf provider or on the kubernetes client's generation.
pytestmark = pytest.mark.generation


def settings(**fields: Any) -> Any:
    return settings_from_connection(conn_id="d", **{"host": "disp.svc:8080", **fields})


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({}, "https://disp.svc:8080"),
        ({"host": "http://127.0.0.1:9000/"}, "http://127.0.0.1:9000"),
        ({"host": "disp.svc", "schema": "http", "port": 8080}, "http://disp.svc:8080"),
        ({"host": "https://disp.svc/api", "port": 443}, "https://disp.svc:443/api"),
    ],
)
def test_the_url_comes_from_host_schema_and_port(fields: dict[str, Any], url: str) -> None:
    assert settings(**fields).base_url == url


@pytest.mark.parametrize("host", [None, "", "ftp://disp.svc"])
def test_a_connection_without_a_usable_host_says_what_to_set(host: str | None) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. https://"):
        settings(host=host)


def test_extras_set_tls_timeouts_and_retries_by_plain_or_form_names() -> None:
    out = settings(
        extra={
            "verify": "false",
            "extra__dispatcher__timeout": "12",
            "wait_timeout": 90,
            "retries": 2,
        }
    )
    assert (out.verify, out.timeout, out.wait_timeout, out.retries) == (False, 12.0, 90.0, 2)
    assert settings(extra={"ca_file": "/ca.pem"}).verify == "/ca.pem"
    with pytest.raises(ValueError, match="'wait_timeout' must be between 1 and 300"):
        settings(extra={"wait_timeout": 900})


def test_the_token_is_the_password_or_a_file_read_again_when_it_changes(tmp_path: Path) -> None:
    assert settings(password="s3cret").token.read() == "s3cret"
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    source = settings(extra={"token_file": str(token_file)}).token
    before = source.version()
    assert source.read() == "first"
    token_file.write_text("second\n")
    os.utime(token_file, (before + 10, before + 10))  # type: ignore[operator]
    assert source.version() != before
    assert source.read() == "second"
    assert "s3cret" not in repr(settings(password="s3cret"))


def test_every_request_carries_the_current_token_of_a_rotated_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json=[])

    path = settings(extra={"token_file": str(token_file)}).token.path
    client = DispatcherClient(BASE, token_file=path, transport=httpx.MockTransport(answer))
    client.clusters()
    token_file.write_text("second\n")
    os.utime(token_file, (1, 1))  # a new mtime, as a kubelet rotation gives
    client.clusters()
    assert seen == ["Bearer first", "Bearer second"]


def test_the_hook_reads_a_connection_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "dispatcher", "host": "http://127.0.0.1:9", "password": "tok"}
    monkeypatch.setenv("AIRFLOW_CONN_DISPATCHER_TEST", json.dumps(conn))
    hook = DispatcherHook("dispatcher_test")
    assert hook.settings.base_url == "http://127.0.0.1:9"
    assert hook.settings.token.read() == "tok"


def test_test_connection_lists_the_clusters(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDispatcher(states=[job_view("queued")])
    hook = DispatcherHook()
    client = DispatcherClient(BASE, transport=fake.transport())
    monkeypatch.setattr(DispatcherHook, "new_client", lambda self: client)
    monkeypatch.setattr(DispatcherHook, "settings", property(lambda self: settings()))
    assert hook.test_connection() == (True, "Reached kube-dispatcher; clusters: gpu-a100, plane")
    failing = httpx.MockTransport(lambda r: httpx.Response(401, json={"detail": "bad token"}))
    monkeypatch.setattr(
        DispatcherHook, "new_client", lambda self: DispatcherClient(BASE, transport=failing)
    )
    assert DispatcherHook().test_connection() == (False, "bad token")


def test_the_provider_info_is_valid_for_airflow_and_registers_the_connection_type() -> None:
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    (conn_type,) = info["connection-types"]
    assert conn_type["connection-type"] == "dispatcher"
    assert conn_type["hook-class-name"] == "dispatcher.airflow.hooks.DispatcherHook"
    assert set(conn_type["conn-fields"]) == {f.name for f in CONNECTION_FIELDS}


# Airflow 3.3 moved hook lookups to the task SDK's runtime manager; the UI still uses this.
@pytest.mark.filterwarnings("ignore:ProvidersManager.hooks is deprecated")
def test_airflow_discovers_the_connection_type_through_the_entry_point() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "kube-dispatcher" in manager.providers
    assert manager.hooks["dispatcher"].hook_class_name == "dispatcher.airflow.hooks.DispatcherHook"
    assert "extra__dispatcher__token_file" in manager.connection_form_widgets
    assert manager.field_behaviours["dispatcher"]["relabeling"]["host"] == "Dispatcher URL"


def test_the_form_widgets_for_older_airflow_come_from_the_same_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The FAB-based UI's form libraries, reduced to what the hook uses.
    class Field:
        def __init__(self, label: str, **kwargs: Any) -> None:
            self.label, self.kwargs = label, kwargs

    wtforms = types.ModuleType("wtforms")
    wtforms.StringField = type("StringField", (Field,), {})  # type: ignore[attr-defined]
    wtforms.BooleanField = type("BooleanField", (Field,), {})  # type: ignore[attr-defined]
    wtforms.IntegerField = type("IntegerField", (Field,), {})  # type: ignore[attr-defined]
    widgets = types.ModuleType("flask_appbuilder.fieldwidgets")
    widgets.BS3TextFieldWidget = lambda: "text"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wtforms", wtforms)
    monkeypatch.setitem(sys.modules, "flask_appbuilder", types.ModuleType("flask_appbuilder"))
    monkeypatch.setitem(sys.modules, "flask_appbuilder.fieldwidgets", widgets)
    form = DispatcherHook.get_connection_form_widgets()
    assert list(form) == [f.name for f in CONNECTION_FIELDS]
    assert type(form["verify"]).__name__ == "BooleanField"
    assert form["wait_timeout"].kwargs["default"] == 60
    behaviour = DispatcherHook.get_ui_field_behaviour()
    assert behaviour["hidden_fields"] == ["schema", "login", "port"]
