"""Domain models (SPEC §1): JSON identical to the seed's serde output, validation, round trips.

Expected JSON is written by hand in the form serde produces from ``seed/budget.rs``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import budgetkit as bk
from budgetkit._core.errors import InvalidInput, InvalidPeriod, InvalidStatus
from budgetkit._core.models import (
    ACTION_SEVERITY,
    Budget,
    BudgetAction,
    BudgetCheckResult,
    BudgetEvent,
    BudgetEventData,
    BudgetStatus,
    BudgetSubjectType,
    BudgetSummary,
    BudgetToolResponse,
    CalendarPeriod,
    DurationPeriod,
    ErrorFields,
    LedgerEntry,
    RollingPeriod,
    format_timestamp,
    json_schemas,
    parse_period,
    parse_timestamp,
)

BUDGET_ID = "bdgt_01933b5a000070008000000000000001"
LEDGER_ID = "ledger_01933b5a000070008000000000000002"
T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def wire(model: BaseModel) -> Any:
    """The model's JSON, parsed; also checks that both serialization paths agree."""
    text = model.model_dump_json()
    assert json.loads(text) == model.model_dump(mode="json")
    return json.loads(text)


def assert_serde_json(model: BaseModel, expected: str) -> None:
    """The model serializes to ``expected`` (as JSON values, and with the same key order)."""
    produced = wire(model)
    wanted = json.loads(expected)
    assert produced == wanted
    assert list(produced) == list(wanted)


def assert_round_trip(model: BaseModel) -> None:
    """parse(dump(x)) == x, through JSON text and through JSON-mode dicts."""
    cls = type(model)
    assert cls.model_validate_json(model.model_dump_json()) == model
    assert cls.model_validate(model.model_dump(mode="json")) == model
    assert cls.model_validate(model.model_dump()) == model


def make_budget(**changes: Any) -> Budget:
    fields: dict[str, Any] = {
        "id": BUDGET_ID,
        "organization_id": "org_1",
        "subject_type": BudgetSubjectType.SESSION,
        "subject_id": "session_abc",
        "currency": "usd",
        "limit": 10.0,
        "balance": 7.5,
        "status": BudgetStatus.ACTIVE,
        "created_at": T0,
        "updated_at": T0,
    }
    return Budget(**(fields | changes))


# ---------------------------------------------------------------------------
# Periods
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "expected", "seconds"),
    [
        (RollingPeriod(window="5h"), '{"type":"rolling","window":"5h"}', 18_000),
        (DurationPeriod(seconds=3600), '{"type":"duration","seconds":3600}', 3600),
        (CalendarPeriod(unit="month"), '{"type":"calendar","unit":"month"}', None),
    ],
)
def test_period_json(
    period: DurationPeriod | RollingPeriod | CalendarPeriod, expected: str, seconds: int | None
) -> None:
    assert_serde_json(period, expected)
    assert period.model_dump_json() == expected
    assert parse_period(json.loads(expected)) == period
    assert parse_period(period) is period
    assert period.duration_seconds() == seconds
    assert_round_trip(period)


def test_rolling_window_kept_as_given() -> None:
    period = parse_period({"type": "rolling", "window": " 5 Hours "})
    assert isinstance(period, RollingPeriod)
    assert period.window == " 5 Hours "
    assert period.duration_seconds() == 18_000


@pytest.mark.parametrize("unit", ["hour", "day", "week", "month", "year"])
def test_every_calendar_unit(unit: str) -> None:
    assert parse_period({"type": "calendar", "unit": unit}) == CalendarPeriod(unit=unit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"type": "rolling", "window": "1.5h"}, "invalid rolling window '1.5h'"),
        ({"type": "rolling", "window": "-5h"}, "invalid rolling window"),
        ({"type": "rolling", "window": ""}, "invalid rolling window"),
        ({"type": "rolling", "window": "1mo"}, "invalid rolling window"),
        ({"type": "rolling", "window": "0h"}, "0 seconds"),
        ({"type": "rolling", "window": "18446744073709551615"}, "expected 1.."),
        ({"type": "rolling", "window": 5}, "valid string"),
        ({"type": "calendar", "unit": "fortnight"}, "'hour', 'day', 'week', 'month' or 'year'"),
        ({"type": "calendar", "unit": "Month"}, "'month'"),
        ({"type": "duration", "seconds": 0}, "greater than 0"),
        ({"type": "duration", "seconds": -1}, "greater than 0"),
        ({"type": "duration", "seconds": 2**53 + 1}, "less than or equal to 9007199254740992"),
        ({"type": "duration", "seconds": 1.5}, "valid integer"),
        ({"type": "duration", "seconds": "60"}, "valid integer"),
        ({"type": "duration", "seconds": True}, "valid integer"),
        ({"type": "duration"}, "seconds"),
        ({"type": "duration", "seconds": 60, "window": "5h"}, "Extra inputs"),
        ({"type": "weekly"}, "'duration', 'rolling', 'calendar'"),
        ({"seconds": 60}, "discriminator 'type'"),
    ],
)
def test_invalid_periods_rejected(value: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidPeriod) as caught:
        parse_period(value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("value", ["5h", 3600, None, ["rolling", "5h"]])
def test_parse_period_rejects_other_types(value: object) -> None:
    with pytest.raises(InvalidPeriod, match="period must be a BudgetPeriod or a dict"):
        parse_period(value)


def test_duration_bounds_accepted() -> None:
    assert parse_period({"type": "duration", "seconds": 1}) == DurationPeriod(seconds=1)
    assert parse_period({"type": "duration", "seconds": 2**53}).duration_seconds() == 2**53


# ---------------------------------------------------------------------------
# Enums
# ---------------------------------------------------------------------------


def test_status_values_and_parse() -> None:
    assert [s.value for s in BudgetStatus] == ["active", "paused", "exhausted", "disabled"]
    for status in BudgetStatus:
        assert BudgetStatus.parse(status.value) is status
        assert BudgetStatus.parse(status) is status
        assert str(status) == status.value


@pytest.mark.parametrize("value", ["unknown", "Active", "ACTIVE", "", " active", None, 1])
def test_unknown_status_rejected_with_accepted_values(value: object) -> None:
    with pytest.raises(InvalidStatus) as caught:
        BudgetStatus.parse(value)
    assert "active, paused, exhausted, disabled" in str(caught.value)


def test_subject_type_forms() -> None:
    members = ["SESSION", "AGENT", "USER", "ORGANIZATION", "APP", "APP_CHANNEL"]
    assert [m.name for m in BudgetSubjectType] == members
    json_forms = ["session", "agent", "user", "organization", "app", "app_channel"]
    assert [m.value for m in BudgetSubjectType] == json_forms
    wire_forms = ["session", "agent", "user", "org", "app", "app_channel"]
    assert [m.as_wire() for m in BudgetSubjectType] == wire_forms
    for member in BudgetSubjectType:
        assert BudgetSubjectType.parse(member.value) is member
        assert BudgetSubjectType.parse(member.as_wire()) is member
        assert BudgetSubjectType.parse(member) is member
    assert BudgetSubjectType.parse("org") is BudgetSubjectType.ORGANIZATION


@pytest.mark.parametrize("value", ["team", "Org", "sessions", "", None, 3])
def test_unknown_subject_type_rejected_with_accepted_values(value: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        BudgetSubjectType.parse(value)
    assert "session, agent, user, org, organization, app, app_channel" in str(caught.value)


# ---------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "text"),
    [
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05Z"),
        (datetime(2024, 1, 2, 3, 4, 5, 123_000, tzinfo=UTC), "2024-01-02T03:04:05.123Z"),
        (datetime(2024, 1, 2, 3, 4, 5, 1_000, tzinfo=UTC), "2024-01-02T03:04:05.001Z"),
        (datetime(2024, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC), "2024-01-02T03:04:05.123456Z"),
        (datetime(2024, 1, 2, 3, 4, 5, 1, tzinfo=UTC), "2024-01-02T03:04:05.000001Z"),
        (datetime(2024, 1, 2, 3, 4, 5, 120_000, tzinfo=UTC), "2024-01-02T03:04:05.120Z"),
        (
            datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "2024-01-02T03:04:05Z",
        ),
        (datetime(9, 1, 1, tzinfo=UTC), "0009-01-01T00:00:00Z"),
    ],
)
def test_timestamp_format(stamp: datetime, text: str) -> None:
    assert format_timestamp(stamp) == text


@pytest.mark.parametrize(
    ("text", "stamp"),
    [
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02t03:04:05z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.5Z", datetime(2024, 1, 2, 3, 4, 5, 500_000, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123456789Z", datetime(2024, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC)),
        ("2024-01-02T05:04:05+02:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-01T22:04:05-05:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05+00:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_timestamp_parse(text: str, stamp: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == stamp
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2024-01-02T03:04:05",  # no offset: naive
        "2024-01-02",
        "1704164645",
        "2024-01-02T03:04Z",
        "2024-13-02T03:04:05Z",
        "2024-02-30T03:04:05Z",
        "2024-01-02T03:04:60Z",  # leap seconds are not representable
        "2024-01-02T03:04:05+2:00",
        "2024-01-02T03:04:05+24:00",
        " 2024-01-02T03:04:05Z",
        "2024-01-02T03:04:05.Z",
        "\uff12\uff10\uff12\uff14-01-02T03:04:05Z",  # fullwidth digits
    ],
)
def test_timestamp_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_timestamp(text)


def test_model_timestamps_validated() -> None:
    assert make_budget(created_at="2024-01-02T05:04:05+02:00").created_at == T0
    local = datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    converted = make_budget(created_at=local).created_at
    assert converted == T0
    assert converted.tzinfo is UTC
    with pytest.raises(ValidationError, match="naive datetime"):
        make_budget(created_at=datetime(2024, 1, 2, 3, 4, 5))
    with pytest.raises(ValidationError, match="RFC 3339"):
        make_budget(updated_at="2024-01-02T03:04:05")
    with pytest.raises(ValidationError, match="expected an aware datetime"):
        make_budget(updated_at=1_704_164_645)


def test_model_dump_python_mode_keeps_datetimes() -> None:
    dumped = make_budget().model_dump()
    assert dumped["created_at"] == T0
    assert dumped["status"] is BudgetStatus.ACTIVE


# ---------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------


def test_budget_minimal_json() -> None:
    assert_serde_json(
        make_budget(),
        """{"id":"bdgt_01933b5a000070008000000000000001","organization_id":"org_1",
        "subject_type":"session","subject_id":"session_abc","currency":"usd","limit":10.0,
        "balance":7.5,"status":"active","created_at":"2024-01-02T03:04:05Z",
        "updated_at":"2024-01-02T03:04:05Z"}""",
    )


def test_budget_full_json_exact_text() -> None:
    budget = make_budget(
        subject_type="org",
        subject_id="org_1",
        soft_limit=8.0,
        balance=-0.25,
        period={"type": "calendar", "unit": "month"},
        period_started_at=datetime(2024, 1, 1, tzinfo=UTC),
        metadata={"team": "search", "note": None, "tags": [1, None, {"x": None}]},
        status="exhausted",
        updated_at=datetime(2024, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
    )
    expected = (
        '{"id":"bdgt_01933b5a000070008000000000000001","organization_id":"org_1",'
        '"subject_type":"organization","subject_id":"org_1","currency":"usd","limit":10.0,'
        '"soft_limit":8.0,"balance":-0.25,"period":{"type":"calendar","unit":"month"},'
        '"period_started_at":"2024-01-01T00:00:00Z",'
        '"metadata":{"team":"search","note":null,"tags":[1,null,{"x":null}]},'
        '"status":"exhausted","created_at":"2024-01-02T03:04:05Z",'
        '"updated_at":"2024-01-02T03:04:05.678Z"}'
    )
    assert budget.model_dump_json() == expected
    assert_serde_json(budget, expected)
    assert_round_trip(budget)


def test_budget_accepts_serde_json() -> None:
    text = """{"id":"bdgt_01933b5a000070008000000000000001","organization_id":"org_1",
        "subject_type":"organization","subject_id":"org_1","currency":"usd","limit":10,
        "soft_limit":null,"balance":3,"period":{"type":"rolling","window":"5h"},
        "period_started_at":"2024-01-02T03:04:05.123456Z","metadata":null,"status":"paused",
        "created_at":"2024-01-02T03:04:05Z","updated_at":"2024-01-02T03:04:05Z"}"""
    budget = Budget.model_validate_json(text)
    assert budget.subject_type is BudgetSubjectType.ORGANIZATION
    assert budget.limit == 10.0
    assert isinstance(budget.limit, float)
    assert budget.soft_limit is None
    assert budget.metadata is None
    assert budget.period == RollingPeriod(window="5h")
    assert budget.status is BudgetStatus.PAUSED
    assert budget.period_started_at == datetime(2024, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC)
    assert "soft_limit" not in wire(budget)
    assert "metadata" not in wire(budget)


def test_budget_metadata_scalar_and_list_kept() -> None:
    for metadata in ([None], 0, False, "", {"a": {"b": None}}):
        budget = make_budget(metadata=metadata)
        assert wire(budget)["metadata"] == metadata
        assert_round_trip(budget)


def test_budget_org_subject_type_accepted() -> None:
    budget = make_budget(subject_type="org")
    assert budget.subject_type is BudgetSubjectType.ORGANIZATION
    assert wire(budget)["subject_type"] == "organization"


def test_budget_rejects_unknown_status_and_subject() -> None:
    with pytest.raises(ValidationError) as caught:
        make_budget(status="archived")
    assert "active, paused, exhausted, disabled" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        make_budget(subject_type="team")
    assert "session, agent, user, org, organization, app, app_channel" in str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"id": "bdgt_01933B5A000070008000000000000001"},
        {"id": "budget_1"},
        {"organization_id": "org 1"},
        {"organization_id": ""},
        {"subject_id": "{x}"},
        {"currency": "us d"},
        {"limit": "10"},
        {"limit": float("nan")},
        {"balance": float("inf")},
        {"limit": True},
        {"period": {"type": "rolling", "window": "1.5h"}},
        {"extra_field": 1},
    ],
)
def test_budget_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make_budget(**changes)


def test_budget_currency_lowercased_and_frozen() -> None:
    budget = make_budget(currency="USD")
    assert budget.currency == "usd"
    with pytest.raises(ValidationError):
        budget.__setattr__("balance", 1.0)  # plain assignment, hidden from type checkers


def test_amount_json_numbers() -> None:
    budget = make_budget(limit=0.1, balance=0.3, soft_limit=8589934591.999999)
    text = budget.model_dump_json()
    assert '"limit":0.1,' in text
    assert '"balance":0.3,' in text
    assert '"soft_limit":8589934591.999999,' in text


# ---------------------------------------------------------------------------
# LedgerEntry
# ---------------------------------------------------------------------------


def test_ledger_entry_minimal_json() -> None:
    entry = LedgerEntry(
        id=LEDGER_ID,
        budget_id=BUDGET_ID,
        amount=-5.0,
        meter_source="manual",
        created_at=T0,
    )
    assert_serde_json(
        entry,
        """{"id":"ledger_01933b5a000070008000000000000002",
        "budget_id":"bdgt_01933b5a000070008000000000000001","amount":-5.0,
        "meter_source":"manual","created_at":"2024-01-02T03:04:05Z"}""",
    )
    assert_round_trip(entry)


def test_ledger_entry_full_json() -> None:
    entry = LedgerEntry(
        id=LEDGER_ID,
        budget_id=BUDGET_ID,
        amount=0.0123,
        meter_source="llm_tokens",
        ref_type="llm_generation",
        ref_id="gen_1",
        session_id="session_child",
        description="gpt-4.1",
        created_at=datetime(2024, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC),
    )
    assert_serde_json(
        entry,
        """{"id":"ledger_01933b5a000070008000000000000002",
        "budget_id":"bdgt_01933b5a000070008000000000000001","amount":0.0123,
        "meter_source":"llm_tokens","ref_type":"llm_generation","ref_id":"gen_1",
        "session_id":"session_child","description":"gpt-4.1",
        "created_at":"2024-01-02T03:04:05.123456Z"}""",
    )
    assert_round_trip(entry)


@pytest.mark.parametrize(
    "changes",
    [{"id": "ledger_1"}, {"id": BUDGET_ID}, {"budget_id": LEDGER_ID}, {"session_id": "a b"}],
)
def test_ledger_entry_validation(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "id": LEDGER_ID,
        "budget_id": BUDGET_ID,
        "amount": 1.0,
        "meter_source": "manual",
        "created_at": T0,
    }
    with pytest.raises(ValidationError):
        LedgerEntry(**(fields | changes))


# ---------------------------------------------------------------------------
# BudgetAction and BudgetCheckResult
# ---------------------------------------------------------------------------


def test_budget_action() -> None:
    assert BudgetAction.continue_() == BudgetAction("continue", None)
    assert BudgetAction.warn("low").kind == "warn"
    assert BudgetAction.pause("paused").message == "paused"
    assert BudgetAction.stop("out") == BudgetAction("stop", "out")
    severities = [
        BudgetAction.continue_().severity,
        BudgetAction.warn("w").severity,
        BudgetAction.pause("p").severity,
        BudgetAction.stop("s").severity,
    ]
    assert severities == [0, 1, 2, 3]
    actions = [BudgetAction.stop("s"), BudgetAction.continue_(), BudgetAction.pause("p")]
    assert max(actions, key=lambda a: a.severity).kind == "stop"
    with pytest.raises(AttributeError):
        BudgetAction.continue_().kind = "stop"  # type: ignore[misc]
    with pytest.raises(InvalidInput, match="continue, warn, pause, stop"):
        BudgetAction("halt")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="message must be a str"):
        BudgetAction("warn", 5)  # type: ignore[arg-type]


def test_check_result_ok() -> None:
    result = BudgetCheckResult.ok()
    assert result.model_dump_json() == '{"action":"continue"}'
    assert result.model_dump(mode="json") == {"action": "continue"}
    assert not result.should_stop()
    assert not result.should_pause()
    assert result.severity == 0
    assert result.to_action() == BudgetAction.continue_()
    assert_round_trip(result)


def test_check_result_stop_json() -> None:
    message = (
        "Budget exhausted. 52.00 tokens spent exceeded the 50.00 tokens limit. "
        "Increase the budget to continue."
    )
    result = BudgetCheckResult(
        action="stop",
        message=message,
        budget_id=BUDGET_ID,
        balance=-2.0,
        currency="tokens",
        error_code="budget_exhausted",
        error_fields=ErrorFields(budget_id=BUDGET_ID, currency="tokens", limit=50.0, spent=52.0),
    )
    assert_serde_json(
        result,
        """{"action":"stop","message":"MESSAGE",
        "budget_id":"bdgt_01933b5a000070008000000000000001","balance":-2.0,
        "currency":"tokens","error_code":"budget_exhausted",
        "error_fields":{"budget_id":"bdgt_01933b5a000070008000000000000001",
        "currency":"tokens","limit":50.0,"spent":52.0}}""".replace("MESSAGE", message),
    )
    assert result.should_stop()
    assert not result.should_pause()
    assert result.to_action() == BudgetAction.stop(message)
    assert_round_trip(result)


def test_check_result_pause_json() -> None:
    result = BudgetCheckResult(
        action="pause",
        message="Budget paused.",
        budget_id=BUDGET_ID,
        balance=2.0,
        currency="usd",
        error_code="budget_paused",
        error_fields=ErrorFields(budget_id=BUDGET_ID, currency="usd", soft_limit=8.0, spent=8.0),
    )
    produced = wire(result)
    assert list(produced["error_fields"]) == ["budget_id", "currency", "spent", "soft_limit"]
    assert produced["error_fields"] == {
        "budget_id": BUDGET_ID,
        "currency": "usd",
        "spent": 8.0,
        "soft_limit": 8.0,
    }
    assert result.should_pause()
    assert result.severity == ACTION_SEVERITY["pause"] == 2
    assert_round_trip(result)


def test_error_fields_order_and_omission() -> None:
    fields = ErrorFields(soft_limit=1.0, spent=2.0, limit=3.0, currency="usd", budget_id="b")
    assert list(wire(fields)) == ["budget_id", "currency", "limit", "spent", "soft_limit"]
    assert ErrorFields().model_dump_json() == "{}"


def test_check_result_fail_open_flag() -> None:
    result = BudgetCheckResult(action="continue", fail_open=True)
    assert wire(result) == {"action": "continue", "fail_open": True}
    assert BudgetCheckResult(action="continue", fail_open=False).model_dump_json() == (
        '{"action":"continue"}'
    )
    assert_round_trip(result)


@pytest.mark.parametrize(
    "data",
    [
        {"action": "halt"},
        {"action": "Stop"},
        {},
        {"action": "stop", "budget_id": "nope"},
        {"action": "stop", "unknown": 1},
        {"action": "continue", "fail_open": "yes"},
    ],
)
def test_check_result_validation(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BudgetCheckResult.model_validate(data)


def test_check_result_warn_accepts_serde_json() -> None:
    text = (
        '{"action":"warn","message":"Budget running low. 2.00 usd remaining of 10.00 usd limit.",'
        '"budget_id":"bdgt_01933b5a000070008000000000000001","balance":2,"currency":"usd"}'
    )
    result = BudgetCheckResult.model_validate_json(text)
    assert result.action == "warn"
    assert result.balance == 2.0
    assert result.error_code is None
    assert json.loads(result.model_dump_json()) == json.loads(text)


# ---------------------------------------------------------------------------
# check_budget tool response
# ---------------------------------------------------------------------------


def test_tool_response_no_budgets() -> None:
    hint = "No budgets are configured for this session. You can proceed without budget constraints."
    response = BudgetToolResponse(status="no_budgets", budgets=[], hint=hint)
    expected = '{"status":"no_budgets","budgets":[],"hint":"HINT"}'.replace("HINT", hint)
    assert_serde_json(response, expected)
    assert_round_trip(response)


def test_tool_response_with_summaries() -> None:
    response = BudgetToolResponse(
        status="warning",
        budgets=[
            BudgetSummary(
                currency="usd", limit=10.0, balance=1.5, percent_remaining=15.0, status="warning"
            ),
            BudgetSummary(
                currency="tokens",
                limit=1000.0,
                balance=512.0,
                soft_limit=800.0,
                percent_remaining=51.2,
                status="active",
            ),
        ],
    )
    assert_serde_json(
        response,
        """{"status":"warning","budgets":[
        {"currency":"usd","limit":10.0,"balance":1.5,"percent_remaining":15.0,"status":"warning"},
        {"currency":"tokens","limit":1000.0,"balance":512.0,"soft_limit":800.0,
        "percent_remaining":51.2,"status":"active"}]}""",
    )
    assert list(wire(response)["budgets"][1]) == [
        "currency",
        "limit",
        "balance",
        "soft_limit",
        "percent_remaining",
        "status",
    ]
    assert_round_trip(response)


@pytest.mark.parametrize("status", ["no_budgets", "ok", "continue"])
def test_summary_status_values(status: str) -> None:
    with pytest.raises(ValidationError):
        BudgetSummary(
            currency="usd",
            limit=1.0,
            balance=1.0,
            percent_remaining=100.0,
            status=status,  # type: ignore[arg-type]
        )


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


def test_event_json() -> None:
    event = BudgetEvent(
        id="1704164645000-0",
        type="budget.paused",
        organization_id="org_1",
        created_at=datetime(2024, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC),
        data=BudgetEventData(
            budget_id=BUDGET_ID,
            balance=2.0,
            limit=10.0,
            currency="usd",
            message="Budget paused.",
            soft_limit=8.0,
        ),
    )
    assert_serde_json(
        event,
        """{"id":"1704164645000-0","type":"budget.paused","organization_id":"org_1",
        "created_at":"2024-01-02T03:04:05.250Z","data":{
        "budget_id":"bdgt_01933b5a000070008000000000000001","balance":2.0,"limit":10.0,
        "currency":"usd","message":"Budget paused.","soft_limit":8.0}}""",
    )
    assert_round_trip(event)


@pytest.mark.parametrize(
    "kind", ["budget.warning", "budget.paused", "budget.exhausted", "budget.resumed"]
)
def test_event_types_and_minimal_data(kind: str) -> None:
    data = BudgetEventData(budget_id=BUDGET_ID, balance=0.0, limit=1.0, currency="usd")
    assert_serde_json(
        data,
        '{"budget_id":"bdgt_01933b5a000070008000000000000001","balance":0.0,"limit":1.0,'
        '"currency":"usd"}',
    )
    event = BudgetEvent(id="1-0", type=kind, organization_id="org_1", created_at=T0, data=data)  # type: ignore[arg-type]
    assert wire(event)["type"] == kind
    assert_round_trip(event)


def test_event_type_rejected() -> None:
    with pytest.raises(ValidationError):
        BudgetEvent.model_validate(
            {
                "id": "1-0",
                "type": "budget.deleted",
                "organization_id": "org_1",
                "created_at": "2024-01-02T03:04:05Z",
                "data": {"budget_id": BUDGET_ID, "balance": 0, "limit": 1, "currency": "usd"},
            }
        )


# ---------------------------------------------------------------------------
# Property: round trips of arbitrary budgets
# ---------------------------------------------------------------------------

amounts = st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1).map(lambda m: m / 1_000_000)
stamps = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(9999, 1, 1),
    timezones=st.just(UTC),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
periods = st.one_of(
    st.builds(DurationPeriod, seconds=st.integers(1, 2**53)),
    st.sampled_from(["5h", "30d", " 5H ", "90", "2 weeks"]).map(lambda w: RollingPeriod(window=w)),
    st.sampled_from(["hour", "day", "week", "month", "year"]).map(
        lambda u: CalendarPeriod(unit=u)  # type: ignore[arg-type]
    ),
)


@given(
    subject_type=st.sampled_from(BudgetSubjectType),
    status=st.sampled_from(BudgetStatus),
    limit=amounts,
    balance=amounts,
    soft_limit=st.none() | amounts,
    period=st.none() | periods,
    started=st.none() | stamps,
    metadata=st.none() | json_values,
    created=stamps,
)
def test_budget_round_trip_property(
    subject_type: BudgetSubjectType,
    status: BudgetStatus,
    limit: float,
    balance: float,
    soft_limit: float | None,
    period: Any,
    started: datetime | None,
    metadata: Any,
    created: datetime,
) -> None:
    budget = make_budget(
        subject_type=subject_type,
        status=status,
        limit=limit,
        balance=balance,
        soft_limit=soft_limit,
        period=period,
        period_started_at=started,
        metadata=metadata,
        created_at=created,
    )
    assert_round_trip(budget)
    produced = wire(budget)
    for key in ("soft_limit", "period", "period_started_at", "metadata"):
        assert (key in produced) == (getattr(budget, key) is not None)
    assert produced["created_at"].endswith("Z")


# ---------------------------------------------------------------------------
# JSON Schemas
# ---------------------------------------------------------------------------


def test_json_schemas() -> None:
    schemas = json_schemas()
    expected_names = {
        "Budget",
        "BudgetCheckResult",
        "BudgetEvent",
        "BudgetEventData",
        "BudgetPeriod",
        "BudgetStatus",
        "BudgetSubjectType",
        "BudgetSummary",
        "BudgetToolResponse",
        "CalendarPeriod",
        "DurationPeriod",
        "ErrorFields",
        "LedgerEntry",
        "RollingPeriod",
    }
    assert set(schemas) == expected_names
    budget = schemas["Budget"]
    assert list(budget["properties"]) == list(Budget.model_fields)
    assert budget["properties"]["created_at"]["format"] == "date-time"
    assert set(budget["required"]) == {
        "id",
        "organization_id",
        "subject_type",
        "subject_id",
        "currency",
        "limit",
        "balance",
        "status",
        "created_at",
        "updated_at",
    }
    assert schemas["BudgetStatus"]["enum"] == ["active", "paused", "exhausted", "disabled"]
    assert "discriminator" in json.dumps(schemas["BudgetPeriod"])
    json.dumps(schemas)  # every schema is plain JSON


def test_serialization_schema_keeps_fields() -> None:
    schema = Budget.model_json_schema(mode="serialization")
    assert list(schema["properties"]) == list(Budget.model_fields)


async def test_metadata_nesting_is_limited_whatever_the_recursion_limit(
    fake_redis: Any,
) -> None:
    """Deep metadata was refused only because json.dumps hit Python's recursion limit: a process
    that raised the limit (mkdocstrings raises it to 16384) stored 10,000 levels, deeper than
    Redis's cjson decodes (1,000), so every full read of the budget would be CorruptState."""
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        kit = bk.BudgetKit(fake_redis)
        with pytest.raises(bk.InvalidInput, match="nested"):
            await kit.create_budget("org_m", "session", "s1", "usd", 1, metadata=deep)
        assert await fake_redis.dbsize() == 0
        nested: Any = {"a": [{"b": [1, 2, {"c": None}]}]}
        made = await kit.create_budget("org_m", "session", "s1", "usd", 1, metadata=nested)
        assert made.metadata == nested
    finally:
        sys.setrecursionlimit(before)
