"""Rollover with a cap (SPEC §11) on both tiers and both clients: at a reset the unused balance,
up to rollover_max, is carried into the next period; the books stay exact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import ManualClock, all_entries, assert_invariant, build_kit, close_kit

import budgetkit as bk

ORG = "org_roll"
SCOPE = bk.Scope(organization_id=ORG, session_id="s1", user_id="u1")
DAY = {"type": "duration", "seconds": 86_400}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture(params=["async", "sync"])
async def kit(
    request: pytest.FixtureRequest, redis: Redis, clock: ManualClock
) -> AsyncIterator[Any]:
    built = build_kit(request.param, redis, clock=clock)
    yield built
    await close_kit(built)


@pytest.mark.parametrize(("spent", "after_reset"), [(3, 15), (7, 13), (12, 10)])
async def test_spec_examples(
    kit: Any, clock: ManualClock, spent: float, after_reset: float
) -> None:
    """limit 10, rollover_max 5: balance 7 -> 15; 3 -> 13; -2 -> 10 (overspend forgiven)."""
    b = await kit.create_budget(ORG, "user", "u1", "usd", 10, period=DAY, rollover_max=5)
    assert b.rollover_max == 5
    await kit.debit(SCOPE, {"usd": spent})
    clock.advance(days=1)
    check = await kit.check(SCOPE)
    after = await kit.get_budget(ORG, b.id)
    assert after.balance == after_reset
    assert after.status == bk.BudgetStatus.ACTIVE and check.action == "continue"
    reset = (await all_entries(kit, ORG, b.id))[0]
    assert reset.meter_source == "period_reset"
    assert reset.amount == (10 - spent) - after_reset  # balance before - new balance
    await assert_invariant(kit, ORG, b.id, 10)


async def test_unused_periods_carry_up_to_the_cap(kit: Any, clock: ManualClock) -> None:
    b = await kit.create_budget(ORG, "user", "u1", "usd", 10, period=DAY, rollover_max=25)
    await kit.debit(SCOPE, {"usd": 9})  # 1 left
    clock.advance(days=2)  # two resets at once: 10 + 1, then 10 + 11
    await kit.check(SCOPE)
    assert (await kit.get_budget(ORG, b.id)).balance == 21
    clock.advance(days=5)  # the carry reaches the cap
    await kit.check(SCOPE)
    assert (await kit.get_budget(ORG, b.id)).balance == 35
    await assert_invariant(kit, ORG, b.id, 10)


async def test_calendar_months_carry(kit: Any, clock: ManualClock) -> None:
    b = await kit.create_budget(ORG, "user", "u1", "usd", 10, period="month", rollover_max=4)
    await kit.debit(SCOPE, {"usd": 8})
    clock.advance(days=31)
    await kit.check(SCOPE)
    assert (await kit.get_budget(ORG, b.id)).balance == 12


async def test_update_sets_and_clears_rollover(kit: Any, clock: ManualClock) -> None:
    b = await kit.create_budget(ORG, "user", "u1", "usd", 10, period=DAY)
    assert b.rollover_max is None and "rollover_max" not in b.model_dump_json()
    b = await kit.update_budget(ORG, b.id, rollover_max=2.5)
    assert b.rollover_max == 2.5
    await kit.debit(SCOPE, {"usd": 1})
    clock.advance(days=1)
    await kit.check(SCOPE)
    assert (await kit.get_budget(ORG, b.id)).balance == 12.5
    b = await kit.update_budget(ORG, b.id, rollover_max=None)
    assert b.rollover_max is None


async def test_invalid_rollover_changes_nothing(
    kit: Any, redis: Redis, redis_snapshot: Any
) -> None:
    b = await kit.create_budget(ORG, "user", "u1", "usd", 10, period=DAY)
    flat = await kit.create_budget(ORG, "user", "u2", "usd", 10)
    before = await redis_snapshot(redis)
    with pytest.raises(bk.InvalidInput, match="rollover_max needs a period"):
        await kit.create_budget(ORG, "user", "u3", "usd", 10, rollover_max=1)
    with pytest.raises(bk.InvalidInput, match="rollover_max needs a period"):
        await kit.update_budget(ORG, flat.id, rollover_max=1)
    with pytest.raises(bk.InvalidAmount):
        await kit.update_budget(ORG, b.id, rollover_max=-1)
    with pytest.raises(bk.InvalidInput):
        await kit.update_budget(ORG, b.id, rollover_max=2**53)
    assert await redis_snapshot(redis) == before
