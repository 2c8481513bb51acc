"""Auto-batching: concurrent calls coalesce into pipelines without changing any result."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from support import assert_invariant

import budgetkit as bk

ORG = "org_b"


async def test_concurrent_debits_coalesce_and_stay_exact(redis: Redis) -> None:
    kit = bk.BudgetKit(redis)
    b = await kit.create_budget(ORG, "session", "s1", "usd", 100)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    results = await asyncio.gather(*(kit.debit(scope, {"usd": 0.5}) for _ in range(300)))
    assert kit._batcher is not None and kit._batcher.batches >= 1
    assert kit._batcher.batched_calls >= 256
    balances = sorted(r.check.balance or 0 for r in results if r.check.balance is not None)
    assert (await kit.get_budget(ORG, b.id)).balance == -50
    assert len({e.id for r in results for e in r.entries}) == 300
    assert balances[0] == -50  # the last debit saw the final balance
    await assert_invariant(kit, ORG, b.id, 100)


async def test_errors_stay_with_their_call(redis: Redis) -> None:
    kit = bk.BudgetKit(redis)
    b = await kit.create_budget(ORG, "session", "s1", "usd", 10)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    await kit.debit(scope, {"usd": 1}, idempotency_key="k")
    outcomes = await asyncio.gather(
        kit.debit(scope, {"usd": 1}),
        kit.debit(scope, {"usd": 2}, idempotency_key="k"),  # conflict
        kit.get_budget(ORG, "bdgt_" + "0" * 32),  # not found
        kit.check(scope),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], bk.DebitResult)
    assert isinstance(outcomes[1], bk.IdempotencyConflict)
    assert isinstance(outcomes[2], bk.BudgetNotFound)
    assert isinstance(outcomes[3], bk.BudgetCheckResult)
    assert (await kit.get_budget(ORG, b.id)).balance == 8


async def test_library_lost_inside_a_batch_is_reloaded(redis: Redis) -> None:
    kit = bk.BudgetKit(redis)
    await kit.create_budget(ORG, "session", "s1", "usd", 10)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    await asyncio.gather(*(kit.debit(scope, {"usd": 0.1}) for _ in range(4)))
    await redis.function_flush()
    results = await asyncio.gather(*(kit.debit(scope, {"usd": 0.1}) for _ in range(4)))
    assert len(results) == 4
    assert kit._runtime.reloads >= 1
    assert (await kit.check_tool(scope)).budgets[0].balance == pytest.approx(9.2)


async def test_batching_can_be_switched_off(redis: Redis) -> None:
    kit = bk.BudgetKit(redis, batching=False)
    assert kit._batcher is None
    await kit.create_budget(ORG, "session", "s1", "usd", 10)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    await asyncio.gather(*(kit.debit(scope, {"usd": 1}) for _ in range(5)))
    assert (await kit.check_tool(scope)).budgets[0].balance == 5


@pytest.mark.real
async def test_a_burst_takes_a_few_pipelines_not_a_connection_each(redis_server_url: str) -> None:
    """Thousands of concurrent calls share a handful of pipelines (each holds a connection while
    in flight): a small pool is enough. Reproduces test_crash's 'Too many connections' when
    every 16 calls took a pipeline of their own."""
    options = bk.ConnectionOptions(max_connections=16)
    async with bk.BudgetKit.from_url(redis_server_url, connection=options) as kit:
        await kit.create_budget(ORG, "session", "burst", "usd", 10_000)
        scope = bk.Scope(organization_id=ORG, session_id="burst")
        results = await asyncio.gather(*(kit.debit(scope, {"usd": 0.01}) for _ in range(2000)))
        assert all(r.entries for r in results)
        assert kit._batcher is not None and kit._batcher.batches <= 16
        assert (await kit.check_tool(scope)).budgets[0].balance == pytest.approx(9_980)


class Boom(BaseException):
    """Not an Exception: what a pipeline's task could die of without settling its calls."""


@pytest.mark.parametrize("death", ["raises", "returns"])
async def test_no_caller_waits_forever_when_a_pipeline_task_dies(
    redis: Redis, death: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline's task that ends without answering its calls (a BaseException, a bug that
    returns early) leaves no caller waiting: each gets OutcomeUnknown (it may have been sent)."""
    kit = bk.BudgetKit(redis)
    scope = bk.Scope("org_b", session_id="s1")
    await kit.create_budget("org_b", "session", "s1", "usd", 100)

    async def dies(calls: list[object]) -> None:
        if death == "raises":
            raise Boom
        return None

    batcher = kit._batcher
    assert batcher is not None
    monkeypatch.setattr(batcher, "_send", dies)
    calls = [kit.debit(scope, {"usd": 1}) for _ in range(8)]
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    lone, *batched = outcomes  # the first call went out alone, the others queued behind it
    assert not isinstance(lone, BaseException)
    assert batched and all(isinstance(o, bk.OutcomeUnknown) for o in batched), outcomes


async def test_a_cancelled_event_follower_ends_when_redis_swallowed_the_cancellation(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python < 3.12: a Redis call (redis-py's wait_for) can swallow a cancellation and return
    normally. ``events(follow=True)`` loops over such calls: it must still end when cancelled."""
    kit = bk.BudgetKit(redis)
    swallowed, give_up = asyncio.Event(), asyncio.Event()

    async def xread_swallowing_cancellation(*args: object, **kwargs: object) -> list[object]:
        if give_up.is_set():
            raise RuntimeError("the follower never ended")  # (so that the test fails, not hangs)
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            swallowed.set()  # what CPython gh-86296 does inside wait_for: no error raised
        return []

    monkeypatch.setattr(kit.redis, "xread", xread_swallowing_cancellation)

    async def follow() -> None:
        async for _ in kit.events("org_b", follow=True):
            pass

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    task.cancel()
    ended, _ = await asyncio.wait({task}, timeout=2)
    give_up.set()
    assert task in ended and task.cancelled(), task
    assert swallowed.is_set()
