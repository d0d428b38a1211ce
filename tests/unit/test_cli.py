"""``dispatcher route`` and ``dispatcher validate-config`` work without any cluster, and
answer bad input with a clear message, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatcher.cli import app

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "config" / "examples"
CONFIG = ROOT / "config" / "dispatcher.example.yaml"
SNAPSHOT = EXAMPLES / "snapshot.yaml"

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def _route(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, ["route", *map(str, args)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_route_explains_every_cluster_in_a_table() -> None:
    code, output = _route(
        "--explain", EXAMPLES / "task-gpu.yaml", "--snapshot", SNAPSHOT, "--config", CONFIG
    )
    assert code == 0
    assert "PLACE: placed on gpu-a100" in output
    for cluster in ("plane", "gpu-a100", "gpu-h100"):
        assert cluster in output
    assert "gpu-model-unavailable" in output


def test_route_prefers_the_in_plane_cluster_for_a_small_cpu_task() -> None:
    code, output = _route(EXAMPLES / "task-cpu.yaml", "--snapshot", SNAPSHOT)
    assert code == 0
    assert output.startswith("place: placed on plane")


def test_route_rejects_a_task_too_big_for_every_node() -> None:
    code, output = _route("-o", "json", EXAMPLES / "task-too-big.yaml", "--snapshot", SNAPSHOT)
    decision = json.loads(output)
    assert code == 0
    assert decision["verdict"] == "reject"
    assert {c["reason"] for c in decision["clusters"]} == {"insufficient-capacity"}
    assert "needs 16 GPUs on one node, largest node has 8" in decision["message"]


def test_route_reports_an_invalid_task_field_by_field(tmp_path: Path) -> None:
    bad = tmp_path / "task.yaml"
    bad.write_text("image: busybox\ncontainer_resources: {limits: {memory: lots}}\ncolour: red\n")
    code, output = _route(bad, "--snapshot", SNAPSHOT)
    assert code == 2
    assert "error: invalid task spec" in output
    assert "container_resources.limits.memory: not a Kubernetes quantity" in output
    assert "colour: unknown field" in output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("clusters: [", "not valid YAML"),
        ("clusters: [{name: x, health: sideways}]", "clusters[0].health"),
    ],
)
def test_route_reports_a_bad_snapshot(tmp_path: Path, content: str, expected: str) -> None:
    bad = tmp_path / "snapshot.yaml"
    bad.write_text(content)
    code, output = _route(EXAMPLES / "task-cpu.yaml", "--snapshot", bad)
    assert code == 2
    assert expected in output


def test_route_reports_a_missing_file() -> None:
    code, output = _route("missing.yaml", "--snapshot", SNAPSHOT)
    assert code == 2
    assert "cannot read the file" in output


def test_validate_config_says_ok_for_a_valid_file() -> None:
    result = runner.invoke(app, ["validate-config", str(CONFIG)])
    assert result.exit_code == 0
    assert result.output.strip() == "OK"


def test_validate_config_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters:\n  - name: Bad\n    credentials: {}\nrouting: {strategy: x}\n")
    result = runner.invoke(app, ["validate-config", str(bad)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "clusters[0].name" in result.output
    assert "clusters[0].credentials: set exactly one of" in result.output
    assert "routing.strategy" in result.output


def test_route_explain_shows_which_dependencies_each_cluster_has(tmp_path: Path) -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

    def cluster(name: str, model: str, objects: dict[str, object]) -> dict[str, object]:
        return {
            "name": name,
            "pod_defaults": {"namespace": "batch", "gpu_tolerations": [gpu]},
            "nodes": [
                {
                    "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": model}},
                    "status": {
                        "allocatable": {
                            "cpu": "96",
                            "memory": "1Ti",
                            "pods": "110",
                            "nvidia.com/gpu": "8",
                        },
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
            ],
            "objects": {"batch": objects},
        }

    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(
        json.dumps(
            {
                "clusters": [
                    cluster("gpu-a100", "A100", {"secrets": {"db": ["password"]}}),
                    cluster(
                        "gpu-h100",
                        "H100",
                        {"secrets": {"db": ["password"]}, "persistentvolumeclaims": ["data-a"]},
                    ),
                ]
            }
        )
    )
    task = tmp_path / "task.json"
    task.write_text(
        json.dumps(
            {
                "image": "busybox:1.36",
                "container_resources": {"limits": {"nvidia.com/gpu": "1"}},
                "env_vars": [
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
                ],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data-a"}}],
            }
        )
    )
    code, output = _route("--explain", task, "--snapshot", snapshot)
    assert code == 0
    assert "PLACE: placed on gpu-h100" in output
    assert "dependencies" in output
    assert "dependency-missing" in output
    code, output = _route("--output", "json", task, "--snapshot", snapshot)
    explained = {c["cluster"]: c for c in json.loads(output)["clusters"]}
    a100 = explained["gpu-a100"]
    assert a100["message"].startswith("PersistentVolumeClaim data-a not in namespace batch")
    assert [m["name"] for m in a100["dependencies"]["missing"]] == ["data-a"]
    assert [(p["name"], p["key"]) for p in a100["dependencies"]["present"]] == [("db", "password")]


def test_route_explain_says_which_dependencies_would_be_copied_from_where(
    tmp_path: Path,
) -> None:
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    node = {
        "metadata": {"name": "a100-0", "labels": {"nvidia.com/gpu.product": "A100"}},
        "status": {
            "allocatable": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(
        json.dumps(
            {
                "clusters": [
                    {"name": "plane", "objects": {"batch": {"secrets": {"regcred": []}}}},
                    {"name": "gpu-a100", "nodes": [node], "objects": {"batch": {}}},
                ]
            }
        )
    )
    config = tmp_path / "dispatcher.yaml"
    kubeconfig = {"kubeconfig_file": {"path": "/nonexistent"}}
    config.write_text(
        json.dumps(
            {
                "clusters": [
                    {
                        "name": "plane",
                        "role": "in-plane",
                        "credentials": kubeconfig,
                        "pod_defaults": {"namespace": "batch"},
                    },
                    {
                        "name": "gpu-a100",
                        "credentials": kubeconfig,
                        "pod_defaults": {"namespace": "batch", "gpu_tolerations": [gpu]},
                        "copy_dependencies": {"from_plane": {"secrets": ["regcred"]}},
                    },
                ]
            }
        )
    )
    task = tmp_path / "task.json"
    task.write_text(
        json.dumps(
            {
                "image": "busybox:1.36",
                "container_resources": {"limits": {"nvidia.com/gpu": "1"}},
                "image_pull_secrets": ["regcred"],
            }
        )
    )
    code, output = _route("--explain", task, "--snapshot", snapshot, "--config", config)
    assert code == 0, output
    assert "PLACE: placed on gpu-a100" in output
    assert "would be copied" in " ".join(output.split())
    code, output = _route("--output", "json", task, "--snapshot", snapshot, "--config", config)
    a100 = {c["cluster"]: c for c in json.loads(output)["clusters"]}["gpu-a100"]
    assert [(w["name"], w["message"]) for w in a100["dependencies"]["would_copy"]] == [
        ("regcred", "would be copied from plane namespace batch")
    ]
