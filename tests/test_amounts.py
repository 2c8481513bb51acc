"""Exact fixed-point amounts (SPEC §2): conversion in, rejection, rounding, conversion out."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetkit._core.amounts import (
    MAX_MICROS,
    MICROS_PER_UNIT,
    from_micros,
    round_micros,
    to_micros,
)
from budgetkit._core.errors import InvalidAmount, InvalidInput

#: Below this many micros (2³³ units) every float from from_micros reads back exactly.
EXACT_ROUND_TRIP_MICROS = 2**33 * MICROS_PER_UNIT


def micros(value: object, **kwargs: bool) -> int:
    """to_micros with a fixed field name, for brevity."""
    return to_micros(value, field="amount", **kwargs)


def negated(value: object) -> object:
    """-value, exactly (Decimal's unary minus rounds to the context and can overflow)."""
    if isinstance(value, Decimal):
        return value.copy_negate()
    assert isinstance(value, int | float)
    return -value


def test_constants() -> None:
    assert MICROS_PER_UNIT == 1_000_000
    assert MAX_MICROS == 9_007_199_254_740_991


def test_point_one_plus_point_two_is_exactly_point_three() -> None:
    assert micros(0.1) == 100_000
    assert micros(0.1) + micros(0.2) == micros(0.3) == 300_000
    assert from_micros(micros(0.1) + micros(0.2)) == 0.3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1, 1_000_000),
        (10, 10_000_000),
        (0.000001, 1),
        (1e-6, 1),
        (1.000001, 1_000_001),
        (0.49, 490_000),
        (123456789.123456, 123_456_789_123_456),
        (1e9, 1_000_000_000_000_000),
        (Decimal("0.1"), 100_000),
        (Decimal("1.5000000"), 1_500_000),
        (Decimal("1.5E+2"), 150_000_000),
        (Decimal("0E-20"), 0),
        (Decimal("-0"), 0),
        (-0.0, 0),
        (Decimal("9007199254.740991"), MAX_MICROS),
        (9_007_199_254, 9_007_199_254_000_000),
    ],
)
def test_accepted_values(value: object, expected: int) -> None:
    assert micros(value) == expected


def test_negative_values_when_allowed() -> None:
    assert micros(-0.5, allow_negative=True) == -500_000
    assert micros(Decimal("-9007199254.740991"), allow_negative=True) == -MAX_MICROS
    assert micros(-3, allow_negative=True) == -3_000_000


@pytest.mark.parametrize("value", [True, False, None, [1], 1j, object(), b"1"])
def test_wrong_types_rejected(value: object) -> None:
    with pytest.raises(
        InvalidAmount, match=r"amount must be an int, float, Decimal or numeric string, got \w+"
    ):
        micros(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1_000_000), (" 0.1 ", 100_000), ("1e-3", 1_000), ("2.5", 2_500_000)],
)
def test_numeric_strings_are_amounts(value: str, expected: int) -> None:
    assert micros(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "1/2", "0x10", "1" * 65])
def test_other_strings_rejected(value: str) -> None:
    with pytest.raises(InvalidAmount, match="amount must be a number, got"):
        micros(value)


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
    ],
)
def test_non_finite_rejected(value: object) -> None:
    with pytest.raises(InvalidAmount, match="amount must be a finite number"):
        micros(value, allow_negative=True)


@pytest.mark.parametrize(
    "value",
    [1e-7, 0.1234567, Decimal("0.0000001"), Decimal("1.0000005"), Decimal("1e-999999999")],
)
def test_more_than_six_decimals_rejected_when_strict(value: object) -> None:
    with pytest.raises(InvalidAmount, match="amount has more than 6 decimal places"):
        micros(value, strict=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e-7, 0),
        (0.1234567, 123_457),
        (Decimal("0.0000005"), 1),  # a tie goes up (away from zero)
        (Decimal("1.0000005"), 1_000_001),
        (Decimal("1e-999999999"), 0),
        (1500 * 3e-6, 4_500),  # 0.0045000000000000005: SPEC §2's example
        (0.1 + 0.2, 300_000),
        ("0.0001125", 113),
    ],
)
def test_more_than_six_decimals_round_half_up(value: object, expected: int) -> None:
    assert micros(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        Decimal("9007199254.740992"),
        9_007_199_255,
        1e10,
        10**40,
        Decimal("1e999999999"),
        Decimal("1e20") + Decimal("1e-7"),
    ],
)
def test_too_large_rejected(value: object) -> None:
    with pytest.raises(InvalidAmount, match=r"amount is too large: .* exceeds 9007199254\.740991"):
        micros(value)
    with pytest.raises(InvalidAmount, match="too large"):
        micros(negated(value), allow_negative=True)


@pytest.mark.parametrize("value", [-1, -0.000001, Decimal("-0.1"), -1e10])
def test_negative_rejected_by_default(value: object) -> None:
    with pytest.raises(InvalidAmount, match="amount must not be negative, got"):
        micros(value)


@pytest.mark.parametrize("value", [0, 0.0, -0.0, Decimal("0"), Decimal("0E-10")])
def test_zero_rejected_when_not_allowed(value: object) -> None:
    with pytest.raises(InvalidAmount, match="amount must not be zero"):
        micros(value, allow_zero=False, allow_negative=True)


def test_message_names_field_and_value() -> None:
    with pytest.raises(InvalidAmount) as caught:
        to_micros(0.1234567, field="soft_limit", strict=True)
    assert "soft_limit" in str(caught.value)
    assert "0.1234567" in str(caught.value)
    with pytest.raises(InvalidAmount) as caught:
        to_micros("five", field="limit")
    assert "limit" in str(caught.value)
    assert "five" in str(caught.value)


def test_invalid_amount_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        micros(math.nan)
    assert issubclass(InvalidAmount, InvalidInput)


def test_huge_value_message_stays_short() -> None:
    with pytest.raises(InvalidAmount) as caught:
        micros(Decimal("1." + "1" * 10_000), strict=True)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("0.0000005"), 1),
        (Decimal("-0.0000005"), -1),
        (Decimal("0.0000004999999999999999999999999999999999"), 0),
        (Decimal("0.0000015"), 2),
        (Decimal("0.0000025"), 3),
        (Decimal("1.2345675"), 1_234_568),
        (Decimal("1.2345674"), 1_234_567),
        (5e-7, 1),
        (0.49, 490_000),
        (7, 7_000_000),
        (Decimal("9007199254.7409914"), MAX_MICROS),
    ],
)
def test_round_micros_rounds_half_up(value: Decimal | int | float, expected: int) -> None:
    assert round_micros(value) == expected


def test_round_micros_price_estimate_example() -> None:
    # SPEC §8: 1.75 USD/M input, 0.175 USD/M cache read; 200,000 input + 800,000 cache-read.
    per_token = Decimal(1) / 1_000_000
    estimate = (Decimal("1.75") * 200_000 + Decimal("0.175") * 800_000) * per_token
    assert round_micros(estimate) == 490_000
    assert round_micros(Decimal("1.75") * 1_000_000 * per_token) == 1_750_000


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, Decimal("NaN"), True, "x", Decimal("9007199254.7409915"), 1e10]
)
def test_round_micros_rejects(value: object) -> None:
    with pytest.raises(InvalidAmount):
        round_micros(value)  # type: ignore[arg-type]


def test_from_micros() -> None:
    assert from_micros(100_000) == 0.1
    assert from_micros(300_000) == 0.3
    assert from_micros(-2_000_000) == -2.0
    assert from_micros(0) == 0.0
    assert isinstance(from_micros(5), float)


@given(st.integers(min_value=-EXACT_ROUND_TRIP_MICROS, max_value=EXACT_ROUND_TRIP_MICROS))
def test_round_trip_is_exact_below_2_pow_33_units(amount_micros: int) -> None:
    assert to_micros(from_micros(amount_micros), field="x", allow_negative=True) == amount_micros


@given(st.integers(min_value=-(MAX_MICROS - 1), max_value=MAX_MICROS - 1))
def test_round_trip_is_within_one_micro_everywhere(amount_micros: int) -> None:
    back = to_micros(from_micros(amount_micros), field="x", allow_negative=True)
    assert abs(back - amount_micros) <= 1


def test_round_trip_known_limit_at_max() -> None:
    # The float nearest 9007199254.740991 is 9007199254.740992, one micro beyond the bound.
    with pytest.raises(InvalidAmount, match="too large"):
        to_micros(from_micros(MAX_MICROS), field="x")


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=6, allow_nan=False))
def test_decimal_with_six_places_is_exact(value: Decimal) -> None:
    assert to_micros(value, field="x", allow_negative=True) == int(value * MICROS_PER_UNIT)


@given(
    st.integers(min_value=0, max_value=MAX_MICROS), st.integers(min_value=0, max_value=MAX_MICROS)
)
def test_sums_are_exact(a_micros: int, b_micros: int) -> None:
    a = Decimal(a_micros).scaleb(-6)
    b = Decimal(b_micros).scaleb(-6)
    total = a_micros + b_micros
    assert to_micros(a, field="a") + to_micros(b, field="b") == total
