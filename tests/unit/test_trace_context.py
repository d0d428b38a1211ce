"""Trace context: which ``traceparent`` headers a job's trace joins, and the ids it gets."""

from __future__ import annotations

import pytest

from dispatcher.settings import TracingSettings
from dispatcher.tracing import JobTrace, parse_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ],
)
def test_an_invalid_traceparent_is_ignored_not_refused(header: str | None) -> None:
    assert parse_traceparent(header) is None


def test_a_valid_traceparent_is_kept_normalised() -> None:
    assert parse_traceparent(VALID) == VALID
    assert parse_traceparent(f" {VALID.upper()} ") == VALID


def test_a_job_joins_its_callers_trace_under_the_callers_span() -> None:
    job = JobTrace("j1234", VALID)
    assert f"{job.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{job.parent_span_id:016x}" == "00f067aa0ba902b7"
    assert job.sampled
    assert not JobTrace("j1234", VALID[:-2] + "00").sampled


def test_a_jobs_ids_are_its_own_and_the_same_in_every_process() -> None:
    one, again, other = JobTrace("j1"), JobTrace("j1"), JobTrace("j2")
    assert (one.trace_id, one.root_span_id) == (again.trace_id, again.root_span_id)
    assert one.trace_id != other.trace_id
    assert one.root_span_id != other.root_span_id
    assert one.parent_span_id is None
    assert 0 < one.trace_id < 2**128
    assert 0 < one.root_span_id < 2**64
    # With a caller, the root keeps the job's own span id.
    assert JobTrace("j1", VALID).root_span_id == one.root_span_id


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("localhost:4318", "http:// or https://"),
        ("ftp://collector/v1/traces", "http:// or https://"),
        ("https://user:pw@collector/v1/traces", "credentials"),
    ],
)
def test_a_bad_endpoint_is_refused_with_the_reason(endpoint: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TracingSettings(enabled=True, endpoint=endpoint)


def test_tracing_is_off_by_default() -> None:
    assert TracingSettings().enabled is False
