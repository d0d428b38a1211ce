"""Kubernetes quantities parse exactly, in each resource's canonical unit, rounding up."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.quantity import (
    describe_amount,
    format_amount,
    parse_quantity,
    to_amount,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Fraction(1)),
        ("500m", Fraction(1, 2)),
        ("1.5", Fraction(3, 2)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("+2", Fraction(2)),
        ("-2", Fraction(-2)),
        ("1Ki", Fraction(1024)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("64Mi", Fraction(64 * 2**20)),
        ("1Ei", Fraction(2**60)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1E", Fraction(10**18)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("12e-3", Fraction(12, 1000)),
        ("100n", Fraction(1, 10**7)),
        ("3u", Fraction(3, 10**6)),
        (" 2Gi ", Fraction(2 * 2**30)),
        (2, Fraction(2)),
        (0.5, Fraction(1, 2)),
    ],
)
def test_quantities_parse_exactly(text: str | int | float, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Gi",
        "1 Gi",
        "1gi",
        "1e",
        "1KiB",
        "1.2.3",
        "0x10",
        "--1",
        "1e99",
        "x" * 70,
        "inf",
        "NaN",
        True,
        float("inf"),
    ],
)
def test_malformed_quantities_are_refused(text: str | bool | float) -> None:
    with pytest.raises(ValueError, match=r"quantity|exponent"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("resource", "text", "amount"),
    [
        ("cpu", "1", 1000),
        ("cpu", "250m", 250),
        ("cpu", "0.1", 100),
        ("cpu", "1u", 1),  # a fraction of a millicore rounds up, like MilliValue()
        ("memory", "1Gi", 2**30),
        ("memory", "1.5", 2),  # a fraction of a byte rounds up, like Value()
        ("memory", "129M", 129 * 10**6),
        ("nvidia.com/gpu", "8", 8),
        ("ephemeral-storage", "10Gi", 10 * 2**30),
    ],
)
def test_amounts_are_canonical_integers_rounded_up(resource: str, text: str, amount: int) -> None:
    assert to_amount(resource, text) == amount


def test_negative_and_oversized_amounts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        to_amount("memory", "-1Gi")
    with pytest.raises(ValueError, match="too large"):
        to_amount("memory", "16Ei")


@given(st.integers(0, 2**20), st.sampled_from(["Ki", "Mi", "Gi", "Ti"]))
def test_binary_suffixes_multiply_by_powers_of_1024(number: int, suffix: str) -> None:
    power = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[suffix]
    assert to_amount("memory", f"{number}{suffix}") == number * 1024**power


@given(st.integers(0, 10**9))
def test_millicores_round_trip_through_formatting(millis: int) -> None:
    assert to_amount("cpu", format_amount("cpu", millis)) == millis


@given(st.integers(0, 2**50))
def test_bytes_round_trip_through_formatting(amount: int) -> None:
    assert to_amount("memory", format_amount("memory", amount)) == amount


@given(st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False))
def test_decimal_text_and_exponent_forms_agree(value: object) -> None:
    text = format(value, "f")
    assert parse_quantity(text) == parse_quantity(f"{text}e0") == Fraction(text)


def test_amounts_are_described_for_people() -> None:
    assert describe_amount("cpu", 4000) == "4 CPUs"
    assert describe_amount("cpu", 1000) == "1 CPU"
    assert describe_amount("cpu", 500) == "500m CPU"
    assert describe_amount("nvidia.com/gpu", 16) == "16 GPUs"
    assert describe_amount("memory", 3 * 2**30) == "3Gi memory"
    assert describe_amount("example.com/fpga", 2) == "2 example.com/fpga"
