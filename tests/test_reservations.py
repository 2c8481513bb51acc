"""Reservations (two-phase holds): SPEC §4 reserve / commit / release, on both tiers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import ManualClock, assert_invariant

import budgetkit as bk

ORG = "org_h"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def kit(redis: Redis, clock: ManualClock) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis, clock=clock)


def scope(session: str = "s1") -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id=session, user_id="u1")


async def test_reserve_counts_holds_and_is_inclusive(kit: bk.BudgetKit) -> None:
    s = await kit.create_budget(ORG, "session", "s1", "usd", 10)
    await kit.create_budget(ORG, "user", "u1", "tokens", 1000)
    h1 = await kit.reserve(scope(), {"usd": 6, "tokens": 100})
    assert h1.granted and h1.id is not None and h1.id.startswith("hold_")
    assert (await kit.get_budget(ORG, s.id)).balance == 10  # holds never change the balance
    r = await kit.check(scope())
    assert r.action == "continue"
    assert (await kit.check_tool(scope())).budgets[0].balance == 4
    denied = await kit.reserve(scope(), {"usd": 4.000001})
    assert not denied.granted and denied.id is None
    assert denied.check.action == "stop" and denied.check.error_code == "budget_insufficient"
    assert denied.check.budget_id == s.id and denied.check.balance == 4
    assert denied.check.message == (
        "Budget insufficient. 4.00 usd requested, 4.00 usd available of the 10.00 usd limit."
    )
    h2 = await kit.reserve(scope(), {"usd": 4})  # inclusive: exactly the available amount
    assert h2.granted
    r = await kit.check(scope())
    assert r.action == "stop" and r.balance == 0


async def test_denial_writes_nothing(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: object
) -> None:
    await kit.create_budget(ORG, "session", "s1", "usd", 1)
    await kit.reserve(scope(), {"usd": 0.5})
    before = await redis_snapshot(redis)  # type: ignore[operator]
    denied = await kit.reserve(scope(), {"usd": 0.6})
    assert not denied.granted
    assert await redis_snapshot(redis) == before  # type: ignore[operator]


async def test_paused_or_exhausted_budget_denies_with_its_own_result(kit: bk.BudgetKit) -> None:
    await kit.create_budget(ORG, "session", "s1", "usd", 10, soft_limit=5)
    await kit.debit(scope(), {"usd": 6})
    denied = await kit.reserve(scope(), {"usd": 1})
    assert denied.check.action == "pause" and denied.check.error_code == "budget_paused"
    await kit.debit(scope(), {"usd": 4})
    denied = await kit.reserve(scope(), {"usd": 1})
    assert denied.check.action == "stop" and denied.check.error_code == "budget_exhausted"
    assert (await kit.reserve(scope(), {"tokens": 5})).granted  # no budget in that currency


async def test_commit_charges_actual_and_resolves_once(kit: bk.BudgetKit) -> None:
    s = await kit.create_budget(ORG, "session", "s1", "usd", 10)
    h = await kit.reserve(scope(), {"usd": 2})
    result = await kit.commit(h, {"usd": 3.5}, meter_source="llm_tokens", ref_id="gen_1")
    assert [e.amount for e in result.entries] == [3.5]
    got = await kit.get_budget(ORG, s.id)
    assert got.balance == 6.5
    assert (await kit.check_tool(scope())).budgets[0].balance == 6.5  # the hold is gone
    with pytest.raises(bk.HoldNotFound):
        await kit.commit(h, {"usd": 1})
    with pytest.raises(bk.HoldNotFound):
        await kit.release(h)
    await assert_invariant(kit, ORG, s.id, 10)


async def test_release_returns_capacity(kit: bk.BudgetKit) -> None:
    s = await kit.create_budget(ORG, "session", "s1", "usd", 10)
    h = await kit.reserve(scope(), {"usd": 10})
    assert not (await kit.reserve(scope(), {"usd": 1})).granted
    released = await kit.release(h)
    assert [b.id for b in released] == [s.id]
    assert (await kit.reserve(scope(), {"usd": 10})).granted
    with pytest.raises(bk.HoldNotFound):
        await kit.release(h)


async def test_expired_hold_stops_counting(kit: bk.BudgetKit, clock: ManualClock) -> None:
    await kit.create_budget(ORG, "session", "s1", "usd", 10)
    crashed = await kit.reserve(scope(), {"usd": 8}, ttl_seconds=30)
    assert not (await kit.reserve(scope(), {"usd": 3})).granted
    clock.advance(seconds=30)  # expiry is inclusive: at exp the hold no longer counts
    assert (await kit.check_tool(scope())).budgets[0].balance == 10
    assert (await kit.reserve(scope(), {"usd": 3})).granted
    with pytest.raises(bk.HoldExpired):
        await kit.commit(crashed, {"usd": 1})


async def test_reserve_and_commit_are_idempotent(kit: bk.BudgetKit) -> None:
    s = await kit.create_budget(ORG, "session", "s1", "usd", 10)
    h = await kit.reserve(scope(), {"usd": 2}, idempotency_key="r1")
    again = await kit.reserve(scope(), {"usd": 2}, idempotency_key="r1")
    assert again.replayed and again.id == h.id
    await kit.commit(h, {"usd": 1}, idempotency_key="c1")
    replay = await kit.commit(h, {"usd": 1}, idempotency_key="c1")
    assert replay.replayed
    assert (await kit.get_budget(ORG, s.id)).balance == 9
    assert (await kit.check_tool(scope())).budgets[0].balance == 9


async def test_commit_of_denied_reservation_is_invalid(kit: bk.BudgetKit) -> None:
    await kit.create_budget(ORG, "session", "s1", "usd", 1)
    denied = await kit.reserve(scope(), {"usd": 2})
    with pytest.raises(bk.InvalidInput):
        await kit.commit(denied, {"usd": 1})
    with pytest.raises(bk.InvalidInput):
        await kit.reserve(scope(), {"usd": 1}, ttl_seconds=0)
