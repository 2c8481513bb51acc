"""Pure evaluation of budget snapshots: SPEC §3 rules, §4 check tie-breaks, §5 messages and tool."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetkit._core.rules import (
    NO_BUDGETS_HINT,
    BudgetSnapshot,
    budget_action,
    check_result,
    event_message,
    format_amount_2dp,
    format_percent,
    percent_remaining_tenths,
    severity,
    tool_response,
)

M = 1_000_000  # micros per unit
MAX_MICROS = 2**53 - 1


def bid(n: int) -> str:
    """A well-formed budget id (check results validate ``bdgt_<32 hex>``)."""
    return f"bdgt_{n:032x}"


def snap(
    limit: float | int = 100,
    balance: float | int = 100,
    soft: float | int | None = None,
    *,
    budget_id: str = "bdgt_01933b5a000070008000000000000001",
    currency: str = "usd",
    status: str = "active",
    ack: bool = False,
    warn_ppm: int = 200_000,
) -> BudgetSnapshot:
    def micros(x: float | int) -> int:
        return int(Decimal(repr(x)) * M)

    return BudgetSnapshot(
        budget_id=budget_id,
        currency=currency,
        limit_micros=micros(limit),
        balance_micros=micros(balance),
        soft_limit_micros=None if soft is None else micros(soft),
        status=status,
        soft_acknowledged=ack,
        warn_fraction_ppm=warn_ppm,
    )


# --- SPEC §3 examples (limit 100) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "soft", "expected"),
    [
        (80, None, "continue"),
        (21, None, "continue"),
        (20, None, "warn"),
        (15, None, "warn"),
        (0, None, "stop"),
        (-5, None, "stop"),
        (15, 80, "pause"),
        (25, 80, "continue"),
        (0, 80, "stop"),
    ],
)
def test_spec_rule_examples(balance: int, soft: int | None, expected: str) -> None:
    s = snap(100, balance, soft)
    assert budget_action(s).kind == expected
    assert check_result([s]).action == expected


def test_warn_boundary_is_exact_integer_comparison() -> None:
    assert budget_action(snap(100, 20.000001)).kind == "continue"
    assert budget_action(snap(100, 20)).kind == "warn"
    # 1/3 limit, warn fraction 0.2: 0.2 x 0.333333 = 0.0666666 → 0.066666 warns, 0.066667 does not
    limit = BudgetSnapshot(bid(11), "usd", 333_333, 66_666, None, "active", False, 200_000)
    assert budget_action(limit).kind == "warn"
    limit = BudgetSnapshot(bid(11), "usd", 333_333, 66_667, None, "active", False, 200_000)
    assert budget_action(limit).kind == "continue"


def test_custom_warn_fraction() -> None:
    assert budget_action(snap(100, 50, warn_ppm=500_000)).kind == "warn"
    assert budget_action(snap(100, 51, warn_ppm=500_000)).kind == "continue"
    assert budget_action(snap(100, 0.000001, warn_ppm=0)).kind == "continue"


def test_status_overrides_rules() -> None:
    assert budget_action(snap(100, 90, status="exhausted")).kind == "stop"
    assert budget_action(snap(100, 90, status="paused")).kind == "pause"
    assert budget_action(snap(100, -1, status="paused")).kind == "stop"


def test_acknowledged_soft_limit_skips_pause_but_warn_and_stop_apply() -> None:
    assert budget_action(snap(100, 15, 80, ack=True)).kind == "warn"
    assert budget_action(snap(100, 30, 50, ack=True)).kind == "continue"
    assert budget_action(snap(100, 0, 80, ack=True)).kind == "stop"
    assert budget_action(snap(100, 15, 80, ack=False)).kind == "pause"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit_micros": 0}, "limit_micros"),
        ({"soft_limit_micros": 0}, "soft_limit_micros"),
        ({"status": "disabled"}, "cannot be checked"),
        ({"warn_fraction_ppm": 1_000_001}, "warn_fraction_ppm"),
        ({"warn_fraction_ppm": -1}, "warn_fraction_ppm"),
    ],
)
def test_impossible_snapshot_is_rejected(kwargs: dict[str, object], error: str) -> None:
    base: dict[str, object] = {
        "budget_id": bid(11),
        "currency": "usd",
        "limit_micros": M,
        "balance_micros": M,
        "soft_limit_micros": None,
        "status": "active",
        "soft_acknowledged": False,
        "warn_fraction_ppm": 200_000,
    }
    base.update(kwargs)
    with pytest.raises(ValueError, match=error):
        BudgetSnapshot(**base)  # type: ignore[arg-type]


# --- SPEC §5 messages and error fields --------------------------------------------------------


def test_stop_message_and_error_fields() -> None:
    s = snap(50, -2, currency="tokens", budget_id=bid(1))
    r = check_result([s])
    assert r.message == (
        "Budget exhausted. 52.00 tokens spent exceeded the 50.00 tokens limit. "
        "Increase the budget to continue."
    )
    assert r.model_dump(mode="json", exclude_none=True) == {
        "action": "stop",
        "message": r.message,
        "budget_id": bid(1),
        "balance": -2.0,
        "currency": "tokens",
        "error_code": "budget_exhausted",
        "error_fields": {"budget_id": bid(1), "currency": "tokens", "limit": 50.0, "spent": 52.0},
    }
    assert r.should_stop()


def test_stop_message_reached_at_exactly_zero() -> None:
    r = check_result([snap(50, 0, currency="tokens")])
    assert r.message == (
        "Budget exhausted. 50.00 tokens spent reached the 50.00 tokens limit. "
        "Increase the budget to continue."
    )
    # a sub-cent overspend is still "exceeded" although both print as 50.00
    r = check_result([snap(50, -0.000001, currency="tokens")])
    assert r.message is not None
    assert "50.00 tokens spent exceeded the 50.00 tokens limit" in r.message


def test_soft_pause_message_and_error_fields() -> None:
    r = check_result([snap(10, 2, 8, budget_id=bid(2))])
    assert r.message == (
        "Budget paused. 8.00 usd spent reached the 8.00 usd soft limit. "
        "Increase or resume the budget to continue."
    )
    assert r.model_dump(mode="json", exclude_none=True) == {
        "action": "pause",
        "message": r.message,
        "budget_id": bid(2),
        "balance": 2.0,
        "currency": "usd",
        "error_code": "budget_paused",
        "error_fields": {"budget_id": bid(2), "currency": "usd", "soft_limit": 8.0, "spent": 8.0},
    }
    assert r.should_pause()
    r = check_result([snap(10, 1.5, 8)])
    assert r.message == (
        "Budget paused. 8.50 usd spent exceeded the 8.00 usd soft limit. "
        "Increase or resume the budget to continue."
    )


def test_operator_pause_message_and_error_fields() -> None:
    r = check_result([snap(10, 7, status="paused", budget_id=bid(3))])
    assert (
        r.message == "Budget paused with 3.00 usd spent. Increase or resume the budget to continue."
    )
    assert r.error_code == "budget_paused"
    assert r.error_fields is not None
    assert r.error_fields.model_dump(mode="json", exclude_none=True) == {
        "budget_id": bid(3),
        "currency": "usd",
        "spent": 3.0,
    }
    # soft limit set but not reached: operator pause message, soft_limit still reported
    r = check_result([snap(10, 7, 8, status="paused")])
    assert (
        r.message == "Budget paused with 3.00 usd spent. Increase or resume the budget to continue."
    )
    assert r.error_fields is not None
    assert r.error_fields.soft_limit == 8.0
    # soft limit reached but acknowledged: still paused by the operator
    r = check_result([snap(10, 1, 8, status="paused", ack=True)])
    assert (
        r.message == "Budget paused with 9.00 usd spent. Increase or resume the budget to continue."
    )
    # balance above limit: spent is clamped at 0
    r = check_result([snap(10, 12, status="paused")])
    assert (
        r.message == "Budget paused with 0.00 usd spent. Increase or resume the budget to continue."
    )


def test_warn_message_has_no_error_code() -> None:
    r = check_result([snap(100, 15, budget_id=bid(4), currency="credits")])
    assert r.model_dump(mode="json", exclude_none=True) == {
        "action": "warn",
        "message": "Budget running low. 15.00 credits remaining of 100.00 credits limit.",
        "budget_id": bid(4),
        "balance": 15.0,
        "currency": "credits",
    }


def test_continue_and_empty_are_bare() -> None:
    assert check_result([]).model_dump(mode="json", exclude_none=True) == {"action": "continue"}
    r = check_result([snap(100, 80), snap(100, 99, currency="tokens")])
    assert r.model_dump(mode="json", exclude_none=True) == {"action": "continue"}


def test_stop_error_fields_json_of_fractional_amounts() -> None:
    s = BudgetSnapshot(bid(11), "usd", 100_000, -200_000, None, "active", False, 200_000)
    r = check_result([s])
    assert r.error_fields is not None
    assert r.error_fields.model_dump(mode="json", exclude_none=True) == {
        "budget_id": bid(11),
        "currency": "usd",
        "limit": 0.1,
        "spent": 0.3,
    }
    assert r.balance == -0.2


# --- rounding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "0.00"),
        (125_000, "0.13"),
        (-125_000, "-0.13"),
        (124_999, "0.12"),
        (5_000, "0.01"),
        (4_999, "0.00"),
        (-4_000, "0.00"),
        (-3_250_000, "-3.25"),
        (52_000_000, "52.00"),
        (1_234_567_890_000, "1234567.89"),
        (MAX_MICROS, "9007199254.74"),
        (-MAX_MICROS, "-9007199254.74"),
        (995_000, "1.00"),
    ],
)
def test_format_amount_2dp(micros: int, text: str) -> None:
    assert format_amount_2dp(micros) == text


@given(st.integers(min_value=-MAX_MICROS, max_value=MAX_MICROS))
def test_format_amount_2dp_matches_decimal_half_away_from_zero(micros: int) -> None:
    exact = Decimal(micros) / M
    expected = exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if expected == 0:
        expected = abs(expected)
    assert format_amount_2dp(micros) == str(expected)


@pytest.mark.parametrize(
    ("balance_micros", "limit_micros", "tenths"),
    [
        (12_250_000, 100_000_000, 123),  # 12.25 % → 12.3
        (12_249_999, 100_000_000, 122),
        (50_000, 100_000_000, 1),  # 0.05 % → 0.1
        (49_999, 100_000_000, 0),
        (1, 3, 333),
        (2, 3, 667),
        (150, 100, 1000),  # balance > limit clamps to 100
        (100, 100, 1000),
        (0, 100, 0),
        (-5, 100, 0),  # negative clamps to 0
        (999_999, 1_000_000, 1000),  # 99.9999 % rounds to 100.0
    ],
)
def test_percent_remaining_tenths(balance_micros: int, limit_micros: int, tenths: int) -> None:
    assert percent_remaining_tenths(balance_micros, limit_micros) == tenths


@given(
    st.integers(min_value=-MAX_MICROS, max_value=MAX_MICROS),
    st.integers(min_value=1, max_value=MAX_MICROS),
)
def test_percent_matches_exact_reference(balance: int, limit: int) -> None:
    exact = min(max(Fraction(balance * 100, limit), Fraction(0)), Fraction(100))
    expected = (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(
        Decimal("0.1"), rounding=ROUND_HALF_UP
    )
    # Decimal division rounds to 28 digits; a true tie is exact, so compare via Fraction too.
    tenths = percent_remaining_tenths(balance, limit)
    assert abs(Fraction(tenths, 10) - exact) <= Fraction(1, 20)
    if abs(Fraction(tenths, 10) - exact) == Fraction(1, 20):
        assert Fraction(tenths, 10) > exact  # ties go up (values are ≥ 0: away from zero)
    assert tenths == int(expected * 10)


@pytest.mark.parametrize(("tenths", "text"), [(1000, "100"), (512, "51.2"), (0, "0"), (5, "0.5")])
def test_format_percent(tenths: int, text: str) -> None:
    assert format_percent(tenths) == text


# --- tie-breaks -------------------------------------------------------------------------------


def test_tie_break_smallest_fraction_remaining_across_currencies() -> None:
    usd = snap(10, 1.5, budget_id=bid(5), currency="usd")  # 15 % remaining
    tokens = snap(1000, 100, budget_id=bid(6), currency="tokens")  # 10 % remaining
    # raw balances would pick usd (1.5 < 100); the fraction picks tokens
    assert check_result([usd, tokens]).budget_id == bid(6)
    assert check_result([tokens, usd]).budget_id == bid(6)


def test_tie_break_equal_fraction_first_wins() -> None:
    a = snap(10, 1, budget_id=bid(10), currency="usd")
    b = snap(1000, 100, budget_id=bid(11), currency="tokens")
    assert check_result([a, b]).budget_id == bid(10)
    assert check_result([b, a]).budget_id == bid(11)


def test_most_restrictive_action_wins() -> None:
    warn = snap(100, 1, budget_id=bid(20))  # 1 % remaining
    pause = snap(100, 90, status="paused", budget_id=bid(21))
    stop = snap(100, 0, budget_id=bid(22))
    cont = snap(100, 90, budget_id=bid(23))
    assert check_result([cont, warn]).budget_id == bid(20)
    assert check_result([cont, warn, pause]).budget_id == bid(21)
    assert check_result([pause, warn, stop, cont]).budget_id == bid(22)


def test_stop_tie_break_most_negative_fraction() -> None:
    a = snap(100, -5, budget_id=bid(10))
    b = snap(10, -1, budget_id=bid(11))  # -10 % beats -5 %
    assert check_result([a, b]).budget_id == bid(11)


snapshots_st = st.lists(
    st.builds(
        BudgetSnapshot,
        budget_id=st.sampled_from([bid(i) for i in range(4)]),
        currency=st.sampled_from(["usd", "tokens"]),
        limit_micros=st.integers(min_value=1, max_value=MAX_MICROS),
        balance_micros=st.integers(min_value=-MAX_MICROS, max_value=MAX_MICROS),
        soft_limit_micros=st.none() | st.integers(min_value=1, max_value=MAX_MICROS),
        status=st.sampled_from(["active", "paused", "exhausted"]),
        soft_acknowledged=st.booleans(),
        warn_fraction_ppm=st.integers(min_value=0, max_value=1_000_000),
    ),
    max_size=6,
)


@given(snapshots_st)
def test_chosen_budget_is_never_less_restrictive(snapshots: list[BudgetSnapshot]) -> None:
    result = check_result(snapshots)
    decisions = [budget_action(s) for s in snapshots]
    top = max((severity(d.kind) for d in decisions), default=0)
    assert severity(result.action) == top
    if result.action == "continue":
        assert result.model_dump(exclude_none=True) == {"action": "continue"}
        return
    # the deciding budget: first of the top rank with the smallest exact fraction remaining
    ranked = [
        (Fraction(s.balance_micros, s.limit_micros), i)
        for i, (s, d) in enumerate(zip(snapshots, decisions, strict=True))
        if severity(d.kind) == top
    ]
    _, index = min(ranked)
    chosen = snapshots[index]
    assert result.balance == chosen.balance_micros / M
    assert result.budget_id == chosen.budget_id
    assert result.message == decisions[index].message
    for s, d in zip(snapshots, decisions, strict=True):
        assert severity(d.kind) <= severity(result.action)
        if severity(d.kind) == top:
            assert Fraction(chosen.balance_micros, chosen.limit_micros) <= Fraction(
                s.balance_micros, s.limit_micros
            )


@given(snapshots_st.filter(bool))
def test_single_budget_matches_reference_rules(snapshots: list[BudgetSnapshot]) -> None:
    s = snapshots[0]
    spent = s.limit_micros - s.balance_micros
    if s.status == "exhausted" or s.balance_micros <= 0:
        expected = "stop"
    elif s.status == "paused" or (
        s.soft_limit_micros is not None and not s.soft_acknowledged and spent >= s.soft_limit_micros
    ):
        expected = "pause"
    elif Fraction(s.balance_micros) <= Fraction(s.warn_fraction_ppm, 1_000_000) * s.limit_micros:
        expected = "warn"
    else:
        expected = "continue"
    assert budget_action(s).kind == expected


# --- events -----------------------------------------------------------------------------------


def test_event_messages() -> None:
    assert event_message("budget.exhausted", 50 * M, -2 * M, None, "tokens") == (
        "Budget exhausted. 52.00 tokens spent exceeded the 50.00 tokens limit. "
        "Increase the budget to continue."
    )
    assert event_message("budget.paused", 10 * M, 2 * M, 8 * M, "usd") == (
        "Budget paused. 8.00 usd spent reached the 8.00 usd soft limit. "
        "Increase or resume the budget to continue."
    )
    assert event_message("budget.paused", 10 * M, 2 * M, 8 * M, "usd", soft_acknowledged=True) == (
        "Budget paused with 8.00 usd spent. Increase or resume the budget to continue."
    )
    assert event_message("budget.warning", 100 * M, 15 * M, None, "usd") == (
        "Budget running low. 15.00 usd remaining of 100.00 usd limit."
    )
    assert event_message("budget.resumed", 100 * M, 100 * M, None, "usd") is None
    with pytest.raises(ValueError, match="unknown event type"):
        event_message("budget.unknown", 100 * M, 100 * M, None, "usd")


# --- check_budget tool response ---------------------------------------------------------------


def test_tool_no_budgets() -> None:
    r = tool_response([])
    assert r.model_dump(mode="json", exclude_none=True) == {
        "status": "no_budgets",
        "budgets": [],
        "hint": NO_BUDGETS_HINT,
    }
    assert NO_BUDGETS_HINT == (
        "No budgets are configured for this session. You can proceed without budget constraints."
    )


def test_tool_full_budget_hint() -> None:
    r = tool_response([snap(10, 10, 8)])
    assert r.model_dump(mode="json", exclude_none=True) == {
        "status": "active",
        "budgets": [
            {
                "currency": "usd",
                "limit": 10.0,
                "balance": 10.0,
                "soft_limit": 8.0,
                "percent_remaining": 100.0,
                "status": "active",
            }
        ],
        "hint": "100% of budget remaining.",
    }


def test_tool_hint_minimum_percent_and_order() -> None:
    r = tool_response([snap(100, 90, currency="usd"), snap(1000, 512, currency="tokens")])
    assert r.status == "active"
    assert r.hint == "51.2% of budget remaining."
    assert [b.currency for b in r.budgets] == ["usd", "tokens"]
    assert [b.percent_remaining for b in r.budgets] == [90.0, 51.2]
    assert "soft_limit" not in r.budgets[0].model_dump(mode="json", exclude_none=True)


def test_tool_hint_below_half_nudges() -> None:
    r = tool_response([snap(100, 40)])
    assert r.hint == "40% of budget remaining. Consider prioritizing task completion."
    r = tool_response([snap(100, 49.95)])  # rounds to 50.0: no nudge
    assert r.hint == "50% of budget remaining."
    r = tool_response([snap(100, 49.949999)])
    assert r.hint == "49.9% of budget remaining. Consider prioritizing task completion."


def test_tool_hint_zero_percent_when_warning_disabled() -> None:
    r = tool_response([snap(100, 0.01, warn_ppm=0)])
    assert r.status == "active"
    assert r.hint == "0% of budget remaining. Consider prioritizing task completion."


def test_tool_status_and_hint_follow_check() -> None:
    snapshots = [
        snap(100, 90, currency="usd"),
        snap(100, 15, currency="tokens"),
        snap(50, -2, currency="credits"),
        snap(10, 7, status="paused", currency="eur"),
        snap(100, 150, currency="gbp"),
    ]
    r = tool_response(snapshots)
    assert r.status == "exhausted"
    assert r.hint == check_result(snapshots).message
    assert [b.status for b in r.budgets] == ["active", "warning", "exhausted", "paused", "active"]
    assert [b.percent_remaining for b in r.budgets] == [90.0, 15.0, 0.0, 70.0, 100.0]
    assert r.budgets[2].balance == -2.0
    r = tool_response([snap(100, 15)])
    assert r.status == "warning"
    assert r.hint == "Budget running low. 15.00 usd remaining of 100.00 usd limit."
    r = tool_response([snap(10, 2, 8)])
    assert r.status == "paused"
    assert r.hint is not None
    assert r.hint.startswith("Budget paused. 8.00 usd spent reached")


@given(snapshots_st)
def test_tool_status_matches_check(snapshots: list[BudgetSnapshot]) -> None:
    r = tool_response(snapshots)
    if not snapshots:
        assert r.status == "no_budgets"
        return
    action = check_result(snapshots).action
    mapping = {"stop": "exhausted", "pause": "paused", "warn": "warning", "continue": "active"}
    assert r.status == mapping[action]
    assert len(r.budgets) == len(snapshots)
    for b in r.budgets:
        assert 0.0 <= b.percent_remaining <= 100.0
