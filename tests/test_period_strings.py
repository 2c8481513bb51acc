"""Period strings in the Python API (issue 12): the CLI's strings, one parser, both tiers.

``create_budget(period="month")`` and ``period="30d"`` behave as ``--period month`` / ``30d``:
``hour|day|week|month|year`` → a calendar period, a rolling window (SPEC §1) → a rolling period.
BudgetPeriod objects and JSON-shaped dicts keep working; an invalid string is an InvalidPeriod
(an InvalidInput) that lists what is accepted, and nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import AsyncOverSync, ManualClock

import budgetkit as bk
import budgetkit.sync as bk_sync
from budgetkit._core.convert import budget_period
from budgetkit._core.models import PERIOD_SECONDS_MAX
from budgetkit.cli import build_parser

ORG = "org_1"
START = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # a Thursday
ACCEPTED = "a calendar unit (hour, day, week, month or year) or a rolling window"

CALENDAR = [
    ("hour", "hour", datetime(2026, 1, 15, 12, tzinfo=UTC)),
    ("day", "day", datetime(2026, 1, 15, tzinfo=UTC)),
    ("week", "week", datetime(2026, 1, 12, tzinfo=UTC)),
    ("month", "month", datetime(2026, 1, 1, tzinfo=UTC)),
    ("year", "year", datetime(2026, 1, 1, tzinfo=UTC)),
    (" Month ", "month", datetime(2026, 1, 1, tzinfo=UTC)),
]
ROLLING = [
    ("30d", 2_592_000),
    ("12h", 43_200),
    ("90m", 5_400),
    ("3600s", 3_600),
    ("5 hours", 18_000),
    (" 5H ", 18_000),
    ("90", 90),
    ("2 weeks", 1_209_600),
]
INVALID = ["1.5h", "-5h", "h", "1mo", "5y", "", "   ", "fortnight", "monthly", "none", "hours"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest_asyncio.fixture(params=["async", "sync"])
async def kit(
    request: pytest.FixtureRequest, redis: Redis, clock: ManualClock
) -> AsyncIterator[bk.BudgetKit]:
    """The async client and the blocking facade, on real Redis and fakeredis (as test_core)."""
    if request.param == "async":
        yield bk.BudgetKit(redis, clock=clock)
        return
    pool_kwargs = redis.connection_pool.connection_kwargs
    if "server" in pool_kwargs:
        server = pool_kwargs["server"]
        sync_kit = bk_sync.BudgetKit(lambda: fakeredis.FakeAsyncRedis(server=server), clock=clock)
    else:
        url = f"redis://{pool_kwargs.get('host', '127.0.0.1')}:{pool_kwargs['port']}/0"
        sync_kit = bk_sync.BudgetKit.from_url(url, clock=clock)
    yield AsyncOverSync(sync_kit)  # type: ignore[misc]
    await asyncio.to_thread(sync_kit.close)


async def create(kit: bk.BudgetKit, period: Any, limit: float = 10) -> bk.Budget:
    return await kit.create_budget(ORG, "session", "session_a", "usd", limit, period=period)


# -- the API takes the strings ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "unit", "started"), CALENDAR)
async def test_calendar_unit_strings(
    kit: bk.BudgetKit, text: str, unit: str, started: datetime
) -> None:
    budget = await create(kit, text)
    assert budget.period == bk.CalendarPeriod(unit=unit)  # type: ignore[arg-type]
    assert budget.period_started_at == started
    assert await kit.get_budget(ORG, budget.id) == budget


@pytest.mark.parametrize(("text", "seconds"), ROLLING)
async def test_rolling_window_strings(kit: bk.BudgetKit, text: str, seconds: int) -> None:
    budget = await create(kit, text)
    assert budget.period == bk.RollingPeriod(window=text)  # the window is kept as given
    assert budget.period is not None and budget.period.duration_seconds() == seconds
    assert budget.period_started_at == START
    assert await kit.get_budget(ORG, budget.id) == budget


async def test_string_periods_reset(kit: bk.BudgetKit, clock: ManualClock) -> None:
    """The stored periods are enforced: a rolling "12h" and a calendar "day" both roll over."""
    rolling, daily = await create(kit, "12h"), await create(kit, "day")
    scope = bk.Scope(ORG, session_id="session_a")
    await kit.debit(scope, {"usd": 4})
    assert [(await kit.get_budget(ORG, b.id)).balance for b in (rolling, daily)] == [6, 6]
    clock.set(datetime(2026, 1, 16, 0, 0, 1, tzinfo=UTC))  # a new UTC day, 12h later
    rolled = [await kit.get_budget(ORG, b.id) for b in (rolling, daily)]
    assert [b.balance for b in rolled] == [10, 10]
    assert rolled[0].period_started_at == datetime(2026, 1, 16, 0, tzinfo=UTC)
    assert rolled[1].period_started_at == datetime(2026, 1, 16, tzinfo=UTC)


async def test_update_budget_takes_the_same_strings(kit: bk.BudgetKit) -> None:
    budget = await create(kit, None)
    updated = await kit.update_budget(ORG, budget.id, period="30d")  # type: ignore[arg-type]
    assert updated.period == bk.RollingPeriod(window="30d")
    updated = await kit.update_budget(ORG, budget.id, period="WEEK")  # type: ignore[arg-type]
    assert updated.period == bk.CalendarPeriod(unit="week")
    assert updated.period_started_at == datetime(2026, 1, 12, tzinfo=UTC)
    with pytest.raises(bk.InvalidPeriod, match=re.escape(ACCEPTED)):
        await kit.update_budget(ORG, budget.id, period="1mo")  # type: ignore[arg-type]
    assert (await kit.get_budget(ORG, budget.id)).period == bk.CalendarPeriod(unit="week")
    cleared = await kit.update_budget(ORG, budget.id, period=None)
    assert cleared.period is None


@pytest.mark.parametrize(
    "period",
    [
        bk.CalendarPeriod(unit="month"),
        bk.RollingPeriod(window="5h"),
        bk.DurationPeriod(seconds=3600),
        {"type": "calendar", "unit": "month"},
        {"type": "rolling", "window": "5h"},
        {"type": "duration", "seconds": 3600},
    ],
)
async def test_models_and_dicts_still_work(kit: bk.BudgetKit, period: Any) -> None:
    budget = await create(kit, period)
    assert budget.period == bk.parse_period(period)


# -- invalid strings --------------------------------------------------------------------------


@pytest.mark.parametrize("text", INVALID)
async def test_invalid_strings_rejected_before_redis(
    kit: bk.BudgetKit, redis: Redis, text: str
) -> None:
    with pytest.raises(bk.InvalidPeriod) as caught:
        await create(kit, text)
    assert isinstance(caught.value, bk.InvalidInput)
    message = str(caught.value)
    assert f"invalid period {text!r}" in message and ACCEPTED in message
    assert "'30d', '12h', '90m', '3600s', '5 hours'" in message
    assert await redis.keys("*") == []


@pytest.mark.parametrize(("text", "seconds"), [("0h", 0), ("18446744073709551615", 2**64 - 1)])
async def test_windows_out_of_range_rejected(kit: bk.BudgetKit, text: str, seconds: int) -> None:
    expected = f"{text!r} is {seconds} seconds; expected 1..{PERIOD_SECONDS_MAX}"
    with pytest.raises(bk.InvalidPeriod, match=re.escape(expected)):
        await create(kit, text)


@pytest.mark.parametrize("value", [3600, 1.5, b"30d", ["rolling", "5h"]])
async def test_other_types_rejected_with_every_accepted_form(
    kit: bk.BudgetKit, value: object
) -> None:
    with pytest.raises(bk.InvalidPeriod) as caught:
        await create(kit, value)
    message = str(caught.value)
    assert message.startswith(f"period must be {ACCEPTED}")
    assert "a BudgetPeriod" in message and "{'type': 'duration', 'seconds': 3600}" in message
    assert message.endswith(f"got {type(value).__name__}")


# -- one parser for the CLI and the API -------------------------------------------------------


def _cli_period(text: str) -> object:
    """What `budgetkit budgets create --period TEXT` hands to create_budget."""
    args = ["budgets", "create", "--org", ORG, "--subject-type", "org", "--limit", "1"]
    namespace: argparse.Namespace = build_parser().parse_args([*args, f"--period={text}"])
    return namespace.period


@pytest.mark.parametrize("text", [text for text, _, _ in CALENDAR] + [text for text, _ in ROLLING])
def test_cli_and_api_read_a_string_alike(text: str) -> None:
    assert _cli_period(text) == budget_period(text)


def test_cli_rejects_what_the_api_rejects(capsys: pytest.CaptureFixture[str]) -> None:
    for text in [text for text in INVALID if text != "none"]:  # the CLI's `none` clears
        with pytest.raises(SystemExit) as stop:
            _cli_period(text)
        assert stop.value.code == 2
        with pytest.raises(bk.InvalidPeriod) as caught:
            budget_period(text)
        err = capsys.readouterr().err
        assert f"argument --period: {caught.value}. See" in err, (text, err)
