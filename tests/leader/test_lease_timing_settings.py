"""Leader-election timing is configured as client-go's is, and a combination that could
let a second leader start before the first one stops is refused with the field at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.errors import ConfigError
from dispatcher.settings import ServiceSettings, load_settings

CLUSTERS = "clusters:\n  - {name: plane, role: in-plane, credentials: {in_cluster: true}}\n"


def test_the_defaults_are_client_go_s() -> None:
    service = ServiceSettings()
    assert (
        service.lease_duration_seconds,
        service.renew_deadline_seconds,
        service.retry_period_seconds,
    ) == (15.0, 10.0, 2.0)


def test_a_shorter_lease_alone_scales_the_deadline_and_the_retry_period() -> None:
    service = ServiceSettings(lease_duration_seconds=4)
    assert service.renew_deadline_seconds == pytest.approx(8 / 3)
    assert service.retry_period_seconds == pytest.approx(8 / 15)


@pytest.mark.parametrize(
    ("service", "field", "message"),
    [
        (
            "{lease_duration_seconds: 10, lease_renew_deadline_seconds: 10}",
            "service.lease_renew_deadline_seconds",
            "must be less than lease_duration_seconds (10)",
        ),
        (
            "{lease_renew_deadline_seconds: 3, lease_retry_period_seconds: 3}",
            "service.lease_retry_period_seconds",
            "must be less than the renew deadline (3)",
        ),
        (
            "{lease_duration_seconds: 3, lease_retry_period_seconds: 2}",
            "service.lease_retry_period_seconds",
            "must be less than the renew deadline (2)",
        ),
    ],
)
def test_unsafe_timing_is_refused_at_its_field(
    tmp_path: Path, service: str, field: str, message: str
) -> None:
    path = tmp_path / "dispatcher.yaml"
    path.write_text(CLUSTERS + f"service: {service}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    [problem] = caught.value.problems
    assert problem.field == field
    assert problem.message.startswith(message)


def test_the_example_configuration_documents_the_timing() -> None:
    example = Path(__file__).parents[2] / "config" / "dispatcher.example.yaml"
    service = load_settings(example).service
    assert service.leader_election
    assert service.lease_renew_deadline_seconds == 10
    assert service.lease_retry_period_seconds == 2
