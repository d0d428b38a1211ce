"""Every PromQL expression of the dashboard and the alert rules parses, and depends only on
metrics (and labels) the dispatcher exports (dispatcher/metrics.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .support import (
    DASHBOARD,
    TARGET_LABELS,
    dashboard_queries,
    exported_metrics,
    grafana_to_promql,
    rule_expressions,
    run,
    scan_promql,
)


def _expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [(where, grafana_to_promql(expr)) for where, expr in dashboard_queries(dashboard)]
    return queries + rule_expressions()


def test_every_dashboard_expression_parses(promtool: str, tmp_path: Path) -> None:
    """promtool has no offline query parser; a recording rule per expression makes
    `promtool check rules` parse each one."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    rules = [
        {"record": f"dashboard:query_{n}:check", "expr": grafana_to_promql(expr)}
        for n, (_, expr) in enumerate(dashboard_queries(dashboard))
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run([promtool, "check", "rules", path])


def test_expressions_use_only_exported_metrics() -> None:
    exported = exported_metrics()
    unknown = []
    for where, expr in _expressions():
        for selector in scan_promql(expr).selectors:
            assert selector.metric, f"{where}: select series by metric name: {expr}"
            if selector.metric not in exported:
                unknown.append(f"{where}: {selector.metric}")
    assert not unknown, "not exported by dispatcher/metrics.py:\n" + "\n".join(unknown)


def test_label_matchers_name_labels_the_metric_has() -> None:
    exported = exported_metrics()
    wrong = []
    for where, expr in _expressions():
        use = scan_promql(expr)
        known = set(TARGET_LABELS)
        for selector in use.selectors:
            labels = exported.get(selector.metric or "", frozenset())
            known |= labels
            for label in selector.labels:
                if label not in labels | TARGET_LABELS:
                    wrong.append(f"{where}: {selector.metric} has no label {label!r}")
        for label in use.grouping_labels - known:
            wrong.append(f"{where}: grouping by {label!r}, which no metric here has")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        (
            'sum by (a, le) (rate(m_bucket{x="1", y=~"$c|"}[5m])) / on (a) group_left n',
            ["m_bucket", "n"],
            {"a", "le"},
        ),
        ("max by (ns) (up_metric) == 0 or absent(up_metric)", ["up_metric", "up_metric"], {"ns"}),
        ('topk(10, x{a="b"}) and on (instance) y offset 5m', ["x", "y"], {"instance"}),
    ],
)
def test_the_promql_scanner_finds_metrics_and_grouping_labels(
    expr: str, metrics: list[str], grouping: set[str]
) -> None:
    use = scan_promql(expr)
    assert [s.metric for s in use.selectors] == metrics
    assert use.grouping_labels == grouping
