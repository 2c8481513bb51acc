"""The spend guard (SPEC §12) on both tiers and both clients: partial and cancelled calls are
charged what they used, never dropped, never charged twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import ManualClock, all_entries, assert_invariant, build_kit, close_kit

import budgetkit as bk

ORG = "org_spend"
SCOPE = bk.Scope(organization_id=ORG, session_id="s1")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def kit(redis: Redis, clock: ManualClock) -> AsyncIterator[bk.BudgetKit]:
    built = build_kit("async", redis, clock=clock)
    await built.create_budget(ORG, "session", "s1", "usd", 1)
    yield built
    await close_kit(built)


async def held(kit: bk.BudgetKit) -> float:
    """What the scope's budget holds (limit minus available balance minus spend)."""
    tool = await kit.check_tool(SCOPE)
    budget = (await kit.list_budgets(ORG))[0]
    return round(budget.balance - tool.budgets[0].balance, 6)


async def test_normal_exit_commits_the_recorded_total(kit: bk.BudgetKit) -> None:
    async with kit.spend(SCOPE, {"usd": 0.05}) as s:
        assert s.hold is not None and s.hold.granted
        assert await held(kit) == 0.05
        for _ in range(3):
            await s.record({"usd": 0.03})  # 0.09: more than the estimate
    assert s.result is not None
    assert [e.amount for e in s.result.entries] == [0.09]
    assert await held(kit) == 0
    await assert_invariant(kit, ORG, s.result.entries[0].budget_id, 1)


async def test_nothing_recorded_releases_the_hold(kit: bk.BudgetKit) -> None:
    async with kit.spend(SCOPE, {"usd": 0.5}) as s:
        assert await held(kit) == 0.5
    assert s.result is None
    assert await held(kit) == 0
    budget = (await kit.list_budgets(ORG))[0]
    assert await all_entries(kit, ORG, budget.id) == []


async def test_an_exception_inside_commits_what_was_recorded(kit: bk.BudgetKit) -> None:
    with pytest.raises(RuntimeError, match="tool failed half way"):
        async with kit.spend(SCOPE, {"usd": 0.2}) as s:
            await s.record({"usd": 0.07})
            raise RuntimeError("tool failed half way")
    assert s.result is not None and [e.amount for e in s.result.entries] == [0.07]
    assert await held(kit) == 0


async def test_a_cancelled_task_is_charged_for_what_it_streamed(kit: bk.BudgetKit) -> None:
    streamed = asyncio.Event()
    guard: list[bk.SpendGuard] = []

    async def stream() -> None:
        async with kit.spend(SCOPE, {"usd": 0.2}) as s:
            guard.append(s)
            await s.record({"usd": 0.011})
            await s.record({"usd": 0.012})
            streamed.set()
            await asyncio.sleep(3600)  # waiting for the next chunk when the caller gives up

    task = asyncio.create_task(stream())
    await streamed.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = guard[0].result
    assert result is not None and [e.amount for e in result.entries] == [0.023]
    assert await held(kit) == 0


async def test_a_denied_reservation_raises_and_holds_nothing(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: Any
) -> None:
    await kit.debit(SCOPE, {"usd": 0.9})
    before = await redis_snapshot(redis)
    with pytest.raises(bk.BudgetExceeded) as caught:
        async with kit.spend(SCOPE, {"usd": 0.2}):
            raise AssertionError("the block must not run")
    assert caught.value.check.error_code == "budget_insufficient"
    assert await redis_snapshot(redis) == before


async def test_an_expired_hold_is_charged_with_a_debit(
    kit: bk.BudgetKit, clock: ManualClock
) -> None:
    async with kit.spend(SCOPE, {"usd": 0.1}, ttl_seconds=5) as s:
        await s.record({"usd": 0.04})
        clock.advance(seconds=6)  # the hold expires while the block runs
    assert s.result is not None and [e.amount for e in s.result.entries] == [0.04]
    assert await held(kit) == 0
    budget = (await kit.list_budgets(ORG))[0]
    assert budget.balance == 0.96


async def test_an_llm_usage_estimate_is_priced_by_the_meter(kit: bk.BudgetKit) -> None:
    usage = bk.LlmUsage(model="gpt-4o-mini", provider="openai", input_tokens=1000, output_tokens=0)
    estimate = bk.LlmUsage(
        model="gpt-4o-mini", provider="openai", input_tokens=1000, output_tokens=4000
    )
    async with kit.spend(SCOPE, estimate) as s:
        assert 0 < await held(kit) < 0.01
        await s.record(usage)
    assert s.result is not None and len(s.result.entries) == 1
    assert await held(kit) == 0


async def test_the_blocking_guard(redis: Redis, clock: ManualClock) -> None:
    sync_kit = build_kit("sync", redis, clock=clock)
    try:
        await sync_kit.create_budget(ORG, "session", "s1", "usd", 1)

        def work() -> Any:
            with sync_kit.sync.spend(SCOPE, {"usd": 0.1}) as s:
                s.record({"usd": 0.02})
                s.record({"usd": 0.03})
            return s.result

        result = await asyncio.to_thread(work)
        assert [e.amount for e in result.entries] == [0.05]
    finally:
        await close_kit(sync_kit)
