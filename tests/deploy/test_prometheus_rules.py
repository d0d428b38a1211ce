"""Alert rules: valid for Prometheus, documented, shipped unchanged by the chart, and each
alert unit-tested with promtool both firing and staying quiet."""

from __future__ import annotations

import re
from collections import defaultdict

import yaml

from .support import CHART, DEPLOY, RULE_TESTS, RULES, alerts, run

EXPECTED_ALERTS = {
    "DispatcherClusterDown",
    "DispatcherClusterCredentialsUnavailable",
    "DispatcherVaultAuthFailing",
    "DispatcherCredentialsExpiringSoon",
    "DispatcherJobsWaitingTooLong",
    "DispatcherFailureRateSpike",
    "DispatcherNoLeader",
    "DispatcherKubeAPIErrors",
    "DispatcherTenantStarved",
}


def test_rules_pass_promtool_check(promtool: str) -> None:
    run([promtool, "check", "rules", RULES])


def test_the_alerts_sres_asked_for_exist() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert names >= EXPECTED_ALERTS, f"missing: {sorted(EXPECTED_ALERTS - names)}"
    assert len(names) == len(alerts()), "alert names must be unique"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{rule['alert']}: no {key}"
        assert "for" in rule, f"{rule['alert']}: alerts must not fire on a single evaluation"


def test_runbooks_document_every_alert() -> None:
    text = (DEPLOY / "prometheus" / "runbooks.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (\w+)", text, re.MULTILINE))
    missing = {rule["alert"] for rule in alerts()} - headings
    assert not missing, f"runbooks.md has no section for {sorted(missing)}"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fires: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in sorted(RULE_TESTS.glob("*.yaml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["rule_files"] == ["../rules.yaml"], f"{path.name}: test rules.yaml"
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fires[case["alertname"]] += 1
                else:
                    quiet[case["alertname"]] += 1
    for rule in alerts():
        name = rule["alert"]
        assert fires[name], f"{name}: no promtool test where it fires"
        assert quiet[name], f"{name}: no promtool test where it stays quiet"


def test_promtool_unit_tests_pass(promtool: str) -> None:
    files = sorted(RULE_TESTS.glob("*.yaml"))
    assert files
    run([promtool, "test", "rules", *files], cwd=RULE_TESTS)


def test_chart_ships_the_same_rules() -> None:
    shipped = CHART / "files" / "rules.yaml"
    assert shipped.read_bytes() == RULES.read_bytes(), (
        f"{shipped} differs from {RULES}: cp deploy/prometheus/rules.yaml {shipped}"
    )
