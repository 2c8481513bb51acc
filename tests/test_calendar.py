"""Lua's period rollover agrees with budgetkit._core.periods (Python datetime), SPEC §7, on both
tiers.

Property tests drive real budgets through the scripts with an injected ManualClock:

- calendar (hour, day, ISO week, month, year): a budget created at ``t`` starts at
  ``bucket_start_ms(t, unit)``; at a later ``t2`` it has reset (balance back to the limit, a
  ``period_reset`` ledger entry of ``balance before - limit``, the new bucket start) iff
  ``bucket_start_ms(t2, unit) > bucket_start_ms(t, unit)``, and is untouched otherwise;
- duration and rolling: started at ``t``, at ``t2`` the start is
  ``aligned_period_start_ms(t, t2, seconds)`` and the budget reset iff that moved (a start in
  the future never resets).

Instants span 1971..2200 with extra weight on month ends, Feb 29 (and Feb 28 of 2100),
Dec 31 / Jan 1, Monday 00:00 and hour boundaries, each +/-1 ms. Hypothesis runs in a worker thread
and hands each example to the test's event loop, so the fixture's client is used as is and the
number of examples can depend on the tier (fakeredis is slower).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

import budgetkit as bk
from budgetkit._core.periods import CALENDAR_UNITS, aligned_period_start_ms, bucket_start_ms
from tests.support import ManualClock, micros

ORG = "org_cal"
SESSION = "sess_cal"
LIMIT = 10
SPENT = 3
EXAMPLES = {"fake": 100, "real": 200}
EXAMPLE_TIMEOUT_S = 30.0

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_MS


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def ms(*args: int) -> int:
    """Unix ms of (year, month, day[, hour, minute, second, ms]) UTC."""
    year, month, day, hour, minute, second, millis = [*args, 0, 0, 0, 0][:7]
    return to_ms(datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=UTC))


MIN_MS = ms(1971, 1, 1)
MAX_MS = ms(2200, 1, 1)


def next_bucket_ms(now_ms: int, unit: str) -> int:
    """Start of the bucket after the one holding ``now_ms``."""
    start = from_ms(bucket_start_ms(now_ms, unit))
    if unit == "month":
        year, month = divmod(start.year * 12 + start.month, 12)  # the next month, 0-based
        return to_ms(start.replace(year=year, month=month + 1))
    if unit == "year":
        return to_ms(start.replace(year=start.year + 1))
    step = {"hour": HOUR_MS, "day": DAY_MS, "week": WEEK_MS}[unit]
    return to_ms(start) + step


def clamp(value: int) -> int:
    return max(MIN_MS, min(MAX_MS, value))


# -- strategies ----------------------------------------------------------------------------------

uniform = st.integers(MIN_MS, MAX_MS)
units = st.sampled_from(CALENDAR_UNITS)
edge_offsets = st.sampled_from([-1, 0, 1]) | st.integers(-HOUR_MS, HOUR_MS)
years = st.integers(1971, 2199)


@st.composite
def near_any_boundary(draw: st.DrawFn) -> int:
    """Within an hour (mostly +/-1 ms) of the start or the end of some bucket."""
    base, unit = draw(uniform), draw(units)
    edge = draw(st.sampled_from([bucket_start_ms(base, unit), next_bucket_ms(base, unit)]))
    return clamp(edge + draw(edge_offsets))


@st.composite
def around_february_end(draw: st.DrawFn) -> int:
    """Feb 29 of a leap year (Feb 28 of the others, e.g. 2100) or the following Mar 1."""
    year = draw(years)
    last = 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    day = ms(year, 2, last)
    point = draw(st.sampled_from([day, day + DAY_MS]) | st.integers(day, day + DAY_MS - 1))
    return clamp(point + draw(st.sampled_from([-1, 0, 1])))


@st.composite
def around_new_year(draw: st.DrawFn) -> int:
    """Dec 31 / Jan 1."""
    return clamp(
        ms(draw(st.integers(1972, 2199)), 1, 1) + draw(edge_offsets | st.integers(-DAY_MS, DAY_MS))
    )


@st.composite
def around_monday(draw: st.DrawFn) -> int:
    """Monday 00:00 of some ISO week."""
    return clamp(bucket_start_ms(draw(uniform), "week") + draw(edge_offsets))


@st.composite
def around_hour(draw: st.DrawFn) -> int:
    return clamp(bucket_start_ms(draw(uniform), "hour") + draw(st.sampled_from([-1, 0, 1])))


instants = st.one_of(
    uniform,
    near_any_boundary(),
    around_february_end(),
    around_new_year(),
    around_monday(),
    around_hour(),
)


@st.composite
def instant_pairs(draw: st.DrawFn) -> tuple[int, int]:
    """(t, t2) with t <= t2: independent, a short or calendar-sized step, or a next boundary."""
    t = draw(instants)
    how = draw(st.sampled_from(["independent", "step", "boundary"]))
    if how == "independent":
        t, t2 = sorted((t, draw(instants)))
        return t, t2
    if how == "step":
        sizes = [
            0,
            1,
            HOUR_MS - 1,
            HOUR_MS,
            DAY_MS,
            WEEK_MS,
            28 * DAY_MS,
            31 * DAY_MS,
            366 * DAY_MS,
        ]
        step = draw(
            st.sampled_from(sizes) | st.integers(0, 2 * DAY_MS) | st.integers(0, 400 * DAY_MS)
        )
        return t, min(MAX_MS, t + step)
    edge = next_bucket_ms(t, draw(units))
    return t, max(t, min(MAX_MS, edge + draw(st.sampled_from([-1, 0, 1]))))


# (n, unit suffix, seconds per unit) -> a duration in seconds and the same length as a window.
WINDOW_UNITS = [("s", 1), ("m", 60), ("h", 3_600), ("d", 86_400), ("w", 604_800)]


@st.composite
def duration_cases(draw: st.DrawFn) -> tuple[int, str, int, int]:
    """(seconds, rolling window text, t, t2): t2 near t + k periods, or before t."""
    suffix, unit_seconds = draw(st.sampled_from(WINDOW_UNITS))
    n = draw(st.integers(1, 1_000) | st.sampled_from([1, 5, 24, 30]))
    seconds = n * unit_seconds
    t = draw(instants)
    period_ms = seconds * 1000
    k = draw(st.integers(0, 3) | st.integers(0, 10**6))
    offset = draw(st.sampled_from([-1, 0, 1]) | st.integers(-period_ms, period_ms))
    t2 = max(0, min(MAX_MS, t + k * period_ms + offset))
    return seconds, f"{n}{suffix}", t, t2


# -- running an async example per hypothesis example ---------------------------------------------


async def run_property(
    request: pytest.FixtureRequest,
    strategy: st.SearchStrategy[Any],
    body: Callable[[Any], Awaitable[None]],
    examples: list[Any],
) -> None:
    """Runs hypothesis in a worker thread; each example is awaited on this test's event loop."""
    loop = asyncio.get_running_loop()
    tier = request.node.callspec.params["redis"]

    @settings(max_examples=EXAMPLES[tier], deadline=None)
    @given(strategy)
    def prop(case: Any) -> None:
        future = asyncio.run_coroutine_threadsafe(body(case), loop)
        try:
            future.result(timeout=EXAMPLE_TIMEOUT_S)
        finally:
            future.cancel()

    for case in examples:
        prop = example(case)(prop)
    await asyncio.to_thread(prop)


def scope() -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id=SESSION)


async def reset_entries(kit: bk.BudgetKit, budget_id: str) -> list[bk.LedgerEntry]:
    return await kit.ledger(ORG, budget_id, limit=10)


# -- calendar ------------------------------------------------------------------------------------

CALENDAR_EXAMPLES = [
    (ms(2024, 2, 29, 23, 59, 59, 999), ms(2024, 3, 1)),  # leap day -> Mar 1
    (ms(2100, 2, 28, 23, 59, 59, 999), ms(2100, 3, 1)),  # 2100 is not a leap year
    (ms(2000, 2, 28, 23, 59, 59, 999), ms(2000, 2, 29)),  # 2000 is
    (ms(2099, 12, 31, 23, 59, 59, 999), ms(2100, 1, 1)),  # new year (a Friday)
    (ms(2024, 12, 29, 23, 59, 59, 999), ms(2024, 12, 30)),  # Sun -> Mon, ISO week 1 of 2025
    (ms(2024, 12, 30), ms(2025, 1, 5, 23, 59, 59, 999)),  # same ISO week across a new year
    (ms(2026, 3, 9, 10, 59, 59, 999), ms(2026, 3, 9, 11)),  # an hour boundary
    (ms(2026, 3, 9, 11), ms(2026, 3, 9, 11, 59, 59, 999)),
    (MIN_MS, MIN_MS),
    (ms(2199, 12, 31, 23, 59, 59, 999), MAX_MS),
]


async def test_calendar_rollover_matches_python(
    redis: Redis, request: pytest.FixtureRequest
) -> None:
    clock = ManualClock()
    kit = bk.BudgetKit(redis, clock=clock)

    async def body(case: tuple[int, int]) -> None:
        t, t2 = case
        assert t <= t2
        await redis.flushall()
        clock.set(from_ms(t))
        made: dict[str, bk.Budget] = {}
        for unit in CALENDAR_UNITS:
            period = {"type": "calendar", "unit": unit}
            budget = await kit.create_budget(ORG, "session", SESSION, "usd", LIMIT, period=period)
            start = bucket_start_ms(t, unit)
            assert budget.period_started_at == from_ms(start), (unit, from_ms(t))
            made[unit] = budget
        charged = await kit.debit(scope(), {"usd": SPENT})  # at t: same bucket, no reset
        assert [e.meter_source for e in charged.entries] == ["manual"] * len(CALENDAR_UNITS)

        clock.set(from_ms(t2))
        for unit, budget in made.items():
            where = (unit, from_ms(t), from_ms(t2))
            start, start2 = bucket_start_ms(t, unit), bucket_start_ms(t2, unit)
            got = await kit.get_budget(ORG, budget.id)
            again = await kit.get_budget(ORG, budget.id)  # a second read never resets again
            entries = await reset_entries(kit, budget.id)
            assert again == got, where
            if start2 > start:
                assert got.period_started_at == from_ms(start2), where
                assert got.balance == LIMIT and got.status == bk.BudgetStatus.ACTIVE, where
                assert [e.meter_source for e in entries] == ["period_reset", "manual"], where
                assert entries[0].amount == -SPENT, where
            else:
                assert start2 == start, where
                assert got.period_started_at == from_ms(start), where
                assert got.balance == LIMIT - SPENT, where
                assert [e.meter_source for e in entries] == ["manual"], where
            total = sum(micros(e.amount) for e in entries)
            assert micros(got.balance) == micros(LIMIT) - total, where

    await run_property(request, instant_pairs(), body, CALENDAR_EXAMPLES)


# -- duration and rolling ------------------------------------------------------------------------

DURATION_EXAMPLES = [
    (60, "1m", ms(2026, 1, 15, 12), ms(2026, 1, 15, 12, 1)),  # exactly one period
    (60, "1m", ms(2026, 1, 15, 12), ms(2026, 1, 15, 12, 0, 59, 999)),  # 1 ms short
    (18_000, "5h", ms(2026, 1, 15, 12), ms(2026, 1, 15, 23, 30)),  # aligned to 22:00
    (3_600, "1h", ms(2026, 1, 15, 12), ms(2026, 1, 15, 6)),  # clock moved back: no reset
    # Instants whose float timestamp x 1000 is just below the integer ms (the client truncates).
    (1, "1s", ms(2038, 6, 1, 12, 0, 0, 2), ms(2038, 6, 1, 12, 0, 1, 2)),
    (60, "1m", ms(2108, 11, 20, 21, 2, 54, 605), ms(2108, 11, 20, 21, 3, 54, 605)),
]


async def test_duration_rollover_is_aligned(redis: Redis, request: pytest.FixtureRequest) -> None:
    clock = ManualClock()
    kit = bk.BudgetKit(redis, clock=clock)

    async def body(case: tuple[int, str, int, int]) -> None:
        seconds, window, t, t2 = case
        await redis.flushall()
        clock.set(from_ms(t))
        periods = [{"type": "duration", "seconds": seconds}, {"type": "rolling", "window": window}]
        made = []
        for period in periods:
            budget = await kit.create_budget(ORG, "session", SESSION, "usd", LIMIT, period=period)
            assert budget.period_started_at == from_ms(t), (period, from_ms(t))
            made.append(budget)
        await kit.debit(scope(), {"usd": SPENT})

        clock.set(from_ms(t2))
        aligned = aligned_period_start_ms(t, t2, seconds)
        for budget in made:
            where = (budget.period, from_ms(t), from_ms(t2), from_ms(aligned))
            got = await kit.get_budget(ORG, budget.id)
            entries = await reset_entries(kit, budget.id)
            assert got.period_started_at == from_ms(aligned), where
            if aligned > t:
                assert got.balance == LIMIT, where
                assert [e.meter_source for e in entries] == ["period_reset", "manual"], where
                assert entries[0].amount == -SPENT, where
            else:
                assert got.balance == LIMIT - SPENT, where
                assert [e.meter_source for e in entries] == ["manual"], where

    await run_property(request, duration_cases(), body, DURATION_EXAMPLES)
