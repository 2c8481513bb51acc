"""Declarative rules: extra warning thresholds, each edge-triggered once per period."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import ManualClock

import budgetkit as bk

ORG = "org_t"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def kit(redis: Redis, clock: ManualClock) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis, clock=clock)


def scope() -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id="s1")


async def threshold_events(kit: bk.BudgetKit) -> list[bk.BudgetEvent]:
    return [e async for e in kit.events(ORG, follow=False) if e.type == "budget.threshold"]


async def test_thresholds_fire_once_each_per_period(kit: bk.BudgetKit, clock: ManualClock) -> None:
    b = await kit.create_budget(
        ORG,
        "session",
        "s1",
        "usd",
        100,
        thresholds=[0.95, 0.5, 0.8],
        period={"type": "duration", "seconds": 3600},
    )
    r = await kit.debit(scope(), {"usd": 49.999999})
    assert [e.type for e in r.events] == []
    r = await kit.debit(scope(), {"usd": 0.000001})  # exactly 50 % spent: inclusive
    assert [(e.type, e.data.threshold) for e in r.events] == [("budget.threshold", 0.5)]
    assert r.events[0].data.message == (
        "Budget threshold reached. 50.00 usd spent, 50% of the 100.00 usd limit."
    )
    r = await kit.debit(scope(), {"usd": 46})  # 96 %: 80 % and 95 % at once, plus the warning
    assert [(e.type, e.data.threshold) for e in r.events] == [
        ("budget.warning", None),
        ("budget.threshold", 0.8),
        ("budget.threshold", 0.95),
    ]
    await kit.top_up(ORG, b.id, 50)  # back under 50 %: no re-fire in the same period
    r = await kit.debit(scope(), {"usd": 50})
    assert [e for e in r.events if e.type == "budget.threshold"] == []
    clock.advance(hours=1)  # a new period: every threshold can fire again
    r = await kit.debit(scope(), {"usd": 81})
    assert [e.data.threshold for e in r.events if e.type == "budget.threshold"] == [0.5, 0.8]
    assert len(await threshold_events(kit)) == 5


async def test_threshold_above_the_limit_and_update(kit: bk.BudgetKit) -> None:
    b = await kit.create_budget(ORG, "session", "s1", "tokens", 1000, thresholds=[1.2])
    await kit.debit(scope(), {"tokens": 1100})
    assert await threshold_events(kit) == []
    r = await kit.debit(scope(), {"tokens": 100})
    assert [e.data.threshold for e in r.events if e.type == "budget.threshold"] == [1.2]
    await kit.update_budget(ORG, b.id, thresholds=[0.25])  # already reached: fires at once
    assert [e.data.threshold for e in await threshold_events(kit)] == [1.2, 0.25]
    await kit.update_budget(ORG, b.id, thresholds=None)
    await kit.debit(scope(), {"tokens": 1})
    assert len(await threshold_events(kit)) == 2


async def test_invalid_thresholds_change_nothing(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: object
) -> None:
    b = await kit.create_budget(ORG, "session", "s1", "usd", 10)
    before = await redis_snapshot(redis)  # type: ignore[operator]
    for bad in ([0], [-0.5], [11], [i / 100 for i in range(1, 18)], "0.5", [0.0000001]):
        with pytest.raises(bk.InvalidInput):
            await kit.update_budget(ORG, b.id, thresholds=bad)  # type: ignore[arg-type]
        with pytest.raises(bk.InvalidInput):
            await kit.create_budget(ORG, "session", "s2", "usd", 10, thresholds=bad)  # type: ignore[arg-type]
    assert await redis_snapshot(redis) == before  # type: ignore[operator]


@pytest.mark.real
async def test_thresholds_fire_once_under_concurrency(real_redis: Redis) -> None:
    kit = bk.BudgetKit(real_redis)
    await kit.create_budget(ORG, "org", ORG, "usd", 100, thresholds=[0.5, 0.8, 0.95])
    scopes = [bk.Scope(organization_id=ORG, session_id=f"s{i}") for i in range(64)]

    async def spend(s: bk.Scope) -> None:
        for _ in range(25):
            await kit.debit(s, {"usd": 0.07})

    await asyncio.gather(*(spend(s) for s in scopes))  # 112 usd spent by 64 tasks
    counts = Counter(e.data.threshold for e in await threshold_events(kit))
    assert counts == {0.5: 1, 0.8: 1, 0.95: 1}
    print(f"\nthresholds under 64 concurrent tasks x 25 debits: {dict(counts)}")


async def test_custom_python_rule_is_applied_by_check(kit: bk.BudgetKit) -> None:
    await kit.create_budget(ORG, "session", "s1", "usd", 100)
    seen: list[int] = []

    def stop_after_half(
        s: bk.Scope, result: bk.BudgetCheckResult, snapshots: object
    ) -> bk.BudgetCheckResult | None:
        budgets = list(snapshots)  # type: ignore[call-overload]
        seen.append(len(budgets))
        if any(b.balance_micros * 2 <= b.limit_micros for b in budgets):
            return bk.BudgetCheckResult(action="stop", message="half spent", error_code="policy")
        return None

    kit.add_check_rule(stop_after_half)
    assert (await kit.check(scope())).action == "continue"
    await kit.debit(scope(), {"usd": 50})
    result = await kit.check(scope())
    assert result.action == "stop" and result.error_code == "policy"
    assert seen == [1, 1]
    # advisory: the budget's own status is untouched
    assert (await kit.list_budgets(ORG))[0].status == bk.BudgetStatus.ACTIVE
