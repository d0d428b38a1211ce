"""Kubernetes API errors by kind: one pure rule for the dispatcher and the simulation."""

from __future__ import annotations

import pytest

from dispatcher.core.apierrors import (
    HealthSignal,
    api_error,
    classify_status,
    health_signal,
    retry_after_seconds,
    status_message,
)
from dispatcher.errors import ApiError, ClusterUnavailable, ErrorKind, UnavailableCause


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorKind.PERMANENT),
        (401, ErrorKind.UNAUTHORIZED),
        (403, ErrorKind.PERMANENT),
        (404, ErrorKind.PERMANENT),
        (405, ErrorKind.PERMANENT),
        (409, ErrorKind.CONFLICT),
        (410, ErrorKind.GONE),
        (413, ErrorKind.PERMANENT),
        (415, ErrorKind.PERMANENT),
        (422, ErrorKind.PERMANENT),
        (429, ErrorKind.THROTTLED),
        (500, ErrorKind.TRANSIENT),
        (502, ErrorKind.TRANSIENT),
        (503, ErrorKind.TRANSIENT),
        (504, ErrorKind.TRANSIENT),
        (0, ErrorKind.TRANSIENT),  # no HTTP status at all
        (302, ErrorKind.TRANSIENT),  # not an error status: not understood, not the request's fault
    ],
)
def test_every_status_class_has_its_kind(status: int, kind: ErrorKind) -> None:
    assert classify_status(status) is kind
    assert ApiError("x", cluster="c", status=status).kind is kind


def test_an_explicit_kind_wins_over_the_status_rule() -> None:
    assert ApiError("x", cluster="c", status=500, kind=ErrorKind.PERMANENT).kind is (
        ErrorKind.PERMANENT
    )


def test_no_answer_is_always_transient_and_says_why() -> None:
    for cause in UnavailableCause:
        error = ClusterUnavailable("x", cluster="c", cause=cause)
        assert error.kind is ErrorKind.TRANSIENT
        assert error.cause is cause
    assert ClusterUnavailable("x", cluster="c").cause is UnavailableCause.TRANSPORT


@pytest.mark.parametrize(
    ("error", "signal"),
    [
        (ApiError("x", cluster="c", status=503), HealthSignal.FAILED),
        (ApiError("x", cluster="c", status=500), HealthSignal.FAILED),
        (ApiError("x", cluster="c", status=429), HealthSignal.THROTTLED),
        (ApiError("x", cluster="c", status=401), HealthSignal.CREDENTIALS),
        (ApiError("x", cluster="c", status=403), HealthSignal.ANSWERED),
        (ApiError("x", cluster="c", status=404), HealthSignal.ANSWERED),
        (ApiError("x", cluster="c", status=409), HealthSignal.ANSWERED),
        (ApiError("x", cluster="c", status=410), HealthSignal.ANSWERED),
        (ApiError("x", cluster="c", status=422), HealthSignal.ANSWERED),
        (ClusterUnavailable("x", cluster="c"), HealthSignal.FAILED),
        (
            ClusterUnavailable("x", cluster="c", cause=UnavailableCause.CREDENTIALS),
            HealthSignal.CREDENTIALS,
        ),
        (
            ClusterUnavailable("x", cluster="c", cause=UnavailableCause.BREAKER),
            HealthSignal.NOT_SENT,
        ),
    ],
)
def test_only_transport_failures_and_5xx_count_against_the_api_server(
    error: ApiError | ClusterUnavailable, signal: HealthSignal
) -> None:
    assert health_signal(error) is signal


@pytest.mark.parametrize(
    ("header", "body", "seconds"),
    [
        ("3", {}, 3.0),
        (" 2 ", {}, 2.0),
        ("0.5", {}, 0.5),
        (None, {"details": {"retryAfterSeconds": 7}}, 7.0),
        ("4", {"details": {"retryAfterSeconds": 7}}, 4.0),  # the header first
        ("Wed, 21 Oct 2026 07:28:00 GMT", {"details": {"retryAfterSeconds": 1}}, 1.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", {}, None),  # a date needs a clock: ignored
        ("-1", {}, None),
        ("inf", {}, None),
        (None, {"details": {"retryAfterSeconds": True}}, None),
        (None, {"details": None}, None),
        (None, None, None),
    ],
)
def test_retry_after_comes_from_the_header_or_the_status_details(
    header: str | None, body: dict[str, object] | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header, body) == seconds


#: What kube-apiserver v1.35 answers for a pod with an invalid name, no image and a
#: secret env value (causes as ``field.Error.ErrorBody()`` renders them).
INVALID_POD = {
    "kind": "Status",
    "status": "Failure",
    "reason": "Invalid",
    "code": 422,
    "message": (
        'Pod "Invalid_Name" is invalid: [metadata.name: Invalid value: "Invalid_Name": a '
        "lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
        "spec.containers[0].image: Required value, spec.containers[0].env[0].name: Invalid "
        'value: "hunter2 secret": a valid environment variable name must consist of ...]'
    ),
    "details": {
        "name": "Invalid_Name",
        "kind": "Pod",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": 'Invalid value: "Invalid_Name": a lowercase RFC 1123 subdomain '
                "must consist of lower case alphanumeric characters",
                "field": "metadata.name",
            },
            {
                "reason": "FieldValueRequired",
                "message": "Required value",
                "field": "spec.containers[0].image",
            },
            {
                "reason": "FieldValueInvalid",
                "message": 'Invalid value: "hunter2 secret": a valid environment variable '
                "name must consist of ...",
                "field": "spec.containers[0].env[0].name",
            },
            {
                "reason": "FieldValueNotSupported",
                "message": 'Unsupported value: "Sometimes": supported values: "Always", '
                '"Never", "OnFailure"',
                "field": "spec.restartPolicy",
            },
            {
                "reason": "FieldValueTooMany",
                "message": "Too many: 5: must have at most 3 items",
                "field": "spec.x",
            },
            {
                "reason": "FieldValueDuplicate",
                "message": 'Duplicate value: "hunter2"',
                "field": "spec.y",
            },
            {
                "reason": "FieldValueInvalid",
                "message": 'Invalid value: v1.Thing{Secret:"hunter2"}: not allowed',
                "field": "spec.z",
            },
            {
                "reason": "Webhook",
                "message": "denied: the value hunter2 is not allowed",
                "field": "spec.w",
            },
        ],
    },
}


def test_a_422_keeps_every_field_path_and_what_is_wrong_but_no_value() -> None:
    message = status_message(422, INVALID_POD)
    assert message.split("; ") == [
        "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower "
        "case alphanumeric characters",
        "spec.containers[0].image: Required value",
        "spec.containers[0].env[0].name: Invalid value: a valid environment variable name "
        "must consist of ...",
        'spec.restartPolicy: Unsupported value: supported values: "Always", "Never", "OnFailure"',
        "spec.x: Too many: must have at most 3 items",
        "spec.y: Duplicate value",
        "spec.z: Invalid value",  # a value we cannot delimit: none of it is kept
        "spec.w: Webhook",  # words we do not know the form of: only their reason
    ]
    for value in ("hunter2", "Invalid_Name", "Sometimes"):
        assert value not in message


def test_a_400_message_is_never_shown_but_its_causes_are() -> None:
    body = {"message": 'cannot unmarshal "hunter2" into Go value', "reason": "BadRequest"}
    assert status_message(400, body) == ""
    error = api_error("c", "create pod ns/p", 400, body)
    assert str(error) == "c: create pod ns/p: HTTP 400 BadRequest"


def test_other_statuses_keep_the_api_servers_message() -> None:
    body = {"message": 'namespaces "nope" not found', "reason": "NotFound"}
    error = api_error("gpu-a100", "create pod nope/p", 404, body)
    assert (error.status, error.reason, error.kind) == (404, "NotFound", ErrorKind.PERMANENT)
    assert error.detail == 'create pod nope/p: HTTP 404 NotFound: namespaces "nope" not found'


def test_a_429_is_throttled_and_carries_its_retry_after() -> None:
    body = {
        "message": "Too many requests, please try again later.",
        "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 1},
    }
    error = api_error("c", "list nodes", 429, body, retry_after_header="3")
    assert (error.kind, error.retry_after) == (ErrorKind.THROTTLED, 3.0)
    assert str(error).endswith("(retry after 3s)")


def test_long_messages_are_clipped() -> None:
    body = {"message": "x" * 5000}
    assert len(status_message(403, body)) == 800
    causes = {"details": {"causes": [{"field": "f1", "message": "Required value"}] * 2}}
    assert status_message(422, causes) == "f1: Required value"  # duplicates once
