"""``benchmarks.compare`` at a small size, on the audited stack, so it cannot silently rot:
every contender runs every task (created, Running, deleted, seen by the admin watch), the
requests are counted from the audit log (the plain client's own count of what it sent
equals the audit's exactly), and the table and the ratios are printed.

KubernetesPodOperator runs where the cncf provider is installed (``make test-provider``);
without it (``make test``, the service's environment) the other two run.
"""

from __future__ import annotations

import io

import pytest

from benchmarks import compare
from tests.stack import Stack

#: Depends on the cncf provider (the kpo contender).
pytestmark = pytest.mark.generation

HAS_PROVIDER = compare.provider_installed()


@pytest.mark.timeout(900)
def test_a_small_compare_run_measures_every_contender_from_the_apiservers_records(
    audited_stack: Stack,
) -> None:
    contenders = ("raw", "dispatcher", "kpo") if HAS_PROVIDER else ("raw", "dispatcher")
    options = compare.Options(
        tasks=4, seconds=8, raised_qps=100, kpo_tasks=2, kpo_lanes=2, contenders=contenders
    )
    out = io.StringIO()
    report = compare.run(audited_stack, options, out)

    rows = {(r["contender"], r["qps"]): r for r in report["rows"]}
    expected = {("raw", 20.0), ("raw", 100), ("dispatcher", "default"), ("dispatcher", 100)}
    if HAS_PROVIDER:
        expected.add(("kpo", "-"))
    assert set(rows) == expected
    for (name, _), row in rows.items():
        tasks = 2 if name == "kpo" else 4
        assert row["tasks"] == tasks
        # Every pod was created and deleted by the contender, as the audit log tells.
        assert row["by_verb_resource"]["create/pods"] == tasks, row
        assert row["by_verb_resource"]["delete/pods"] >= tasks, row
        assert 0 < row["created_p50_s"] <= row["running_p50_s"], row
        assert row["running_pod_minutes"] > 0, row
        assert row["cpu_seconds"] > 0, row
        assert row["peak_rss_mib"] > 0, row
    for qps in (20.0, 100):
        raw = rows["raw", qps]
        assert raw["requests"] == sum(raw["requests_sent_by_its_own_count"].values()), raw
    assert rows["dispatcher", "default"]["startup_requests"] > 0
    ratio_lines = [line for line in report["ratios"] if line.startswith("dispatcher")]
    assert len(ratio_lines) == (3 if HAS_PROVIDER else 2), report["ratios"]
    if HAS_PROVIDER:
        # The operator polls its pod while it runs (GET pods/<name>).
        assert rows["kpo", "-"]["reads_naming_pod_while_running"] > 0
    # The plain client and the dispatcher learn from their watch: no reads of a pod.
    for key in (("raw", 20.0), ("raw", 100), ("dispatcher", "default"), ("dispatcher", 100)):
        assert rows[key]["reads_naming_pod_while_running"] == 0, rows[key]
    text = out.getvalue()
    assert "| contender | QPS |" in text
    assert all(line in text for line in report["ratios"])
