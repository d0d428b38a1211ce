"""The XCom sidecar's script, run for real with ``sh``, and the reading of its log: a value
arrives whole or not at all."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from dispatcher.core.xcom import READY, XComError, parse_sidecar_log, sidecar_command

POD = "produce-0123456789-0"


def stopped_sidecar(directory: Path) -> list[str]:
    """Start the script on ``directory``, stop it as the kubelet does; its output."""
    proc = subprocess.Popen(sidecar_command(POD, str(directory)), stdout=subprocess.PIPE, text=True)  # noqa: S603
    assert proc.stdout is not None
    assert proc.stdout.readline().split() == [READY, POD]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return out.splitlines()


def test_a_large_return_json_is_read_back_exactly(tmp_path: Path) -> None:
    value = {"rows": [{"id": i, "text": "é" * 300} for i in range(2000)], "nested": [[1, 2.5]]}
    (tmp_path / "return.json").write_text(json.dumps(value))
    assert parse_sidecar_log(stopped_sidecar(tmp_path), POD, max_bytes=4 << 20) == value


def test_no_or_an_empty_return_json_is_none_as_in_kpo(tmp_path: Path) -> None:
    assert parse_sidecar_log(stopped_sidecar(tmp_path), POD, max_bytes=1024) is None
    (tmp_path / "return.json").write_text("")
    assert parse_sidecar_log(stopped_sidecar(tmp_path), POD, max_bytes=1024) is None


def test_a_truncated_log_is_an_error_never_a_wrong_value(tmp_path: Path) -> None:
    (tmp_path / "return.json").write_text(json.dumps(list(range(5000))))
    lines = stopped_sidecar(tmp_path)
    with pytest.raises(XComError, match="holds no complete"):
        parse_sidecar_log(lines[:-1], POD, max_bytes=1 << 20)  # the end marker lost
    with pytest.raises(XComError, match="incomplete"):
        parse_sidecar_log([lines[0], *lines[2:]], POD, max_bytes=1 << 20)  # a line lost


def test_a_value_over_the_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "return.json").write_text(json.dumps("x" * 10_000))
    with pytest.raises(XComError, match="max_xcom_bytes"):
        parse_sidecar_log(stopped_sidecar(tmp_path), POD, max_bytes=4096)


def test_only_this_pods_last_block_counts(tmp_path: Path) -> None:
    (tmp_path / "return.json").write_text('"old"')
    old = stopped_sidecar(tmp_path)
    (tmp_path / "return.json").write_text('"new"')
    new = stopped_sidecar(tmp_path)
    other = [line.replace(POD, "other-pod-0") for line in stopped_sidecar(tmp_path)]
    assert parse_sidecar_log([*old, *new, *other], POD, max_bytes=1024) == "new"
    with pytest.raises(XComError):
        parse_sidecar_log(other, POD, max_bytes=1024)


def test_a_file_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "return.json").write_text("{not json")
    with pytest.raises(XComError, match="not JSON"):
        parse_sidecar_log(stopped_sidecar(tmp_path), POD, max_bytes=1024)


def test_what_would_collide_with_the_sidecar_is_refused_at_its_path() -> None:
    from dispatcher.core.spec import parse_task_spec
    from dispatcher.errors import SpecError

    with pytest.raises(SpecError) as refused:
        parse_task_spec(
            {
                "image": "busybox",
                "xcom_sidecar": True,
                "init_containers": [{"name": "airflow-xcom-sidecar", "image": "busybox"}],
                "volumes": [{"name": "kube-dispatcher-xcom", "emptyDir": {}}],
                "volume_mounts": [{"name": "kube-dispatcher-xcom", "mountPath": "/airflow/xcom"}],
            }
        )
    fields = {problem.field for problem in refused.value.problems}
    assert {"init_containers[0].name", "volumes[0].name", "volume_mounts[0].mountPath"} <= fields
