"""The check cache (issue 17) on real servers (Redis, and Valkey in the Valkey tier).

A cached kit and an uncached kit share one server and one clock; every answer of the cached one
must equal the uncached one's: after the cached kit's own writes (read-your-writes), after
another client's writes once their invalidation arrived, across period rollovers and hold
expiries (the injected clock), with the tracking connection killed and the event loop stalled.
The staleness canary catches an invalidation lost on purpose and counts nothing under a
concurrent writer. (The Cluster's check cache: tests/test_cluster.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

import budgetkit as bk
import budgetkit.sync as bk_sync
from budgetkit._core import client as client_module

pytestmark = pytest.mark.real

ORG = "org_cc"
SCOPE = bk.Scope(ORG, session_id="s1", agent_id="a1", user_id="u1")
OTHER = bk.Scope(ORG, session_id="s2", user_id="u1")  # shares the user budget
T0 = datetime(2031, 1, 1, tzinfo=UTC)
INVALIDATION_WAIT_S = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest_asyncio.fixture
async def kits(real_redis: Redis) -> AsyncIterator[tuple[bk.BudgetKit, bk.BudgetKit, Clock]]:
    clock = Clock()
    cached = bk.BudgetKit(real_redis, clock=clock)
    plain = bk.BudgetKit(real_redis, clock=clock)
    await cached.enable_check_cache(heartbeat_ms=20)
    try:
        yield cached, plain, clock
    finally:
        await cached.disable_check_cache()


async def budgets(kit: bk.BudgetKit) -> list[str]:
    """The budgets of SCOPE and OTHER; their ids."""
    made = [
        await kit.create_budget(ORG, "session", "s1", "usd", 10, soft_limit=8, period="hour"),
        await kit.create_budget(ORG, "agent", "a1", "usd", 50),
        await kit.create_budget(ORG, "user", "u1", "usd", 20, period="day", rollover_max=5),
        await kit.create_budget(ORG, "session", "s2", "usd", 5),
    ]
    return [b.id for b in made]


async def serving(kit: bk.BudgetKit) -> None:
    """Waits until the cache serves (tracking proven by a heartbeat)."""
    deadline = time.monotonic() + INVALIDATION_WAIT_S
    while True:
        stats = kit.check_cache_stats()
        assert stats is not None
        if stats.serving:
            return
        assert time.monotonic() < deadline, "the cache never started serving"
        await asyncio.sleep(0.005)


async def warmed(cached: bk.BudgetKit, plain: bk.BudgetKit) -> list[str]:
    """The budgets made, tracking proven, SCOPE cached (the first check tracks, the next fill)."""
    ids = await budgets(plain)
    await serving(cached)
    for _ in range(3):
        await cached.check(SCOPE)
    return ids


async def same_answers(cached: bk.BudgetKit, plain: bk.BudgetKit, scope: bk.Scope) -> None:
    assert await cached.check(scope) == await plain.check(scope)
    assert await cached.check_tool(scope) == await plain.check_tool(scope)


async def test_a_repeated_check_is_answered_from_memory(
    kits: tuple[bk.BudgetKit, bk.BudgetKit, Clock],
) -> None:
    cached, plain, _ = kits
    await budgets(plain)
    await serving(cached)
    await cached.check(SCOPE)  # tracks the organization: not filled yet
    await cached.check(SCOPE)  # fills
    before = cached.check_cache_stats()
    assert before is not None
    for _ in range(20):
        await same_answers(cached, plain, SCOPE)
    after = cached.check_cache_stats()
    assert after is not None and after.hits - before.hits >= 38, after
    assert 0 < after.hit_rate <= 1


async def test_own_writes_are_read_back_at_once(
    kits: tuple[bk.BudgetKit, bk.BudgetKit, Clock],
) -> None:
    cached, plain, _ = kits
    ids = await budgets(plain)
    await serving(cached)
    await cached.check(SCOPE)
    rng = random.Random(7)
    for _ in range(300):
        scope = SCOPE if rng.random() < 0.7 else OTHER
        kind = rng.randrange(5)
        if kind == 0:
            await cached.debit(scope, {"usd": rng.choice([0.01, 0.5, 2])})
        elif kind == 1:
            held = await cached.reserve(scope, {"usd": 0.3}, ttl_seconds=60)
            if held.granted and rng.random() < 0.5:
                await cached.commit(held, {"usd": 0.1})
            elif held.granted:
                await cached.release(held)
        elif kind == 2:
            await cached.top_up(ORG, rng.choice(ids), 1)
        elif kind == 3:
            await cached.resume(scope, levels=("session",))
        # every answer right after an acknowledged write equals the store's
        await same_answers(cached, plain, SCOPE)
        await same_answers(cached, plain, OTHER)
    stats = cached.check_cache_stats()
    assert stats is not None and stats.hits > 0, stats


async def test_other_clients_writes_arrive_by_invalidation(
    kits: tuple[bk.BudgetKit, bk.BudgetKit, Clock],
) -> None:
    cached, plain, _ = kits
    await warmed(cached, plain)
    waits = []
    for _ in range(20):
        await plain.debit(SCOPE, {"usd": 0.01})  # another client
        expected = await plain.check_tool(SCOPE)
        started = time.monotonic()
        while await cached.check_tool(SCOPE) != expected:
            assert time.monotonic() - started < INVALIDATION_WAIT_S, "never invalidated"
            await asyncio.sleep(0)
        waits.append(time.monotonic() - started)
    assert max(waits) < INVALIDATION_WAIT_S


async def test_concurrent_misses_share_one_round_trip(
    kits: tuple[bk.BudgetKit, bk.BudgetKit, Clock],
) -> None:
    """After an invalidation every task of a process misses at once; they share the round trip
    already in flight instead of sending one each, and all get the store's answer."""
    cached, plain, _ = kits
    await warmed(cached, plain)
    for _ in range(5):
        await plain.debit(SCOPE, {"usd": 0.01})  # another client: the scope is invalidated
        expected = await plain.check_tool(SCOPE)
        deadline = time.monotonic() + INVALIDATION_WAIT_S
        while True:  # until the push arrived (then every task below misses)
            answers = await asyncio.gather(*(cached.check_tool(SCOPE) for _ in range(32)))
            if answers[-1] == expected:
                break
            assert time.monotonic() < deadline, "never invalidated"
        assert answers[-1] == expected
    stats = cached.check_cache_stats()
    assert stats is not None and stats.joined >= 5 * 16, stats


async def test_period_rollover_and_hold_expiry_are_not_answered_from_memory(
    kits: tuple[bk.BudgetKit, bk.BudgetKit, Clock],
) -> None:
    cached, plain, clock = kits
    await budgets(plain)
    await serving(cached)
    await cached.debit(SCOPE, {"usd": 9})  # session paused (soft 8), user at 11 spent
    held = await cached.reserve(OTHER, {"usd": 1}, ttl_seconds=30)
    assert held.granted
    for _ in range(2):
        await same_answers(cached, plain, SCOPE)
        await same_answers(cached, plain, OTHER)
    clock.advance(seconds=31)  # the hold expired: released by the next round trip
    await same_answers(cached, plain, OTHER)
    clock.advance(hours=1)  # the session budget's hour rolled over
    await same_answers(cached, plain, SCOPE)
    assert (await cached.check(SCOPE)).action == "continue"
    clock.advance(days=1)
    await same_answers(cached, plain, SCOPE)


async def test_a_killed_tracking_connection_serves_nothing_until_proven(
    kits: tuple[bk.BudgetKit, bk.BudgetKit, Clock], real_redis: Redis
) -> None:
    cached, plain, _ = kits
    await warmed(cached, plain)
    for _ in range(5):
        tracker = cached._check_cache._tracker if cached._check_cache else None
        assert tracker is not None
        tracking_id = await tracker._command("CLIENT", "ID")
        await real_redis.execute_command("CLIENT", "KILL", "ID", tracking_id)
        await plain.debit(SCOPE, {"usd": 0.01})  # written while tracking is down
        await same_answers(cached, plain, SCOPE)
        await serving(cached)
        await same_answers(cached, plain, SCOPE)
    stats = cached.check_cache_stats()
    assert stats is not None and stats.resets >= 5, stats


async def test_a_stalled_event_loop_serves_nothing_stale(
    kits: tuple[bk.BudgetKit, bk.BudgetKit, Clock], redis_server_url: str
) -> None:
    cached, plain, _ = kits
    await warmed(cached, plain)
    writer = bk_sync.BudgetKit.from_url(redis_server_url, clock=cached._clock)
    try:
        for _ in range(3):
            thread = asyncio.get_running_loop().run_in_executor(
                None, writer.debit, SCOPE, {"usd": 0.01}
            )
            time.sleep(0.2)  # noqa: ASYNC251 — the loop stalls on purpose: the push waits unread
            await thread
            expected = await plain.check_tool(SCOPE)
            assert await cached.check_tool(SCOPE) == expected  # the lease expired meanwhile
    finally:
        writer.close()
    stats = cached.check_cache_stats()
    assert stats is not None and stats.lease_expiries >= 1, stats


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["debit", "reserve", "top_up", "resume", "advance", "other_debit"]),
        st.sampled_from([SCOPE, OTHER]),
        st.integers(min_value=1, max_value=400),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=OPERATIONS)
async def test_cached_and_uncached_kits_agree_on_every_answer(
    real_redis: Redis, operations: list[tuple[str, bk.Scope, int]]
) -> None:
    await real_redis.flushall()
    clock = Clock()
    cached = bk.BudgetKit(real_redis, clock=clock)
    plain = bk.BudgetKit(real_redis, clock=clock)
    await cached.enable_check_cache(heartbeat_ms=20)
    try:
        ids = await budgets(plain)
        await serving(cached)
        for name, scope, n in operations:
            if name == "debit":
                await cached.debit(scope, {"usd": n / 100})
            elif name == "other_debit":
                await plain.debit(scope, {"usd": n / 100})
                expected = await plain.check(scope)
                deadline = time.monotonic() + INVALIDATION_WAIT_S
                while await cached.check(scope) != expected:  # within the invalidation window
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0)
            elif name == "reserve":
                await cached.reserve(scope, {"usd": n / 100}, ttl_seconds=n % 90 + 1)
            elif name == "top_up":
                await cached.top_up(ORG, ids[n % len(ids)], n / 100)
            elif name == "resume":
                await cached.resume(scope, levels=("session", "user"))
            else:
                clock.advance(seconds=n * 20)
            for each in (SCOPE, OTHER):
                await same_answers(cached, plain, each)
    finally:
        await cached.disable_check_cache()


async def test_enable_validates_and_disable_stops(real_redis: Redis) -> None:
    kit = bk.BudgetKit(real_redis)
    with pytest.raises(bk.InvalidInput, match="heartbeat_ms"):
        await kit.enable_check_cache(heartbeat_ms=0)
    assert kit.check_cache_stats() is None
    await kit.enable_check_cache()
    with pytest.raises(bk.InvalidInput, match="already"):
        await kit.enable_check_cache()
    await kit.disable_check_cache()
    assert kit.check_cache_stats() is None
    await kit.disable_check_cache()  # twice is fine


async def test_fakeredis_has_no_client_tracking() -> None:
    kit = bk.BudgetKit(fakeredis.FakeAsyncRedis())
    with pytest.raises(bk.BudgetUnavailable, match="check cache"):
        await kit.enable_check_cache()
    assert kit.check_cache_stats() is None


def test_blocking_client_caches_too(redis_server_url: str) -> None:
    with bk_sync.BudgetKit.from_url(redis_server_url, prefix="bk_cc_sync") as kit:
        kit.create_budget(ORG, "session", "s1", "usd", 10)
        kit.enable_check_cache(heartbeat_ms=20)
        deadline = time.monotonic() + INVALIDATION_WAIT_S
        while True:
            stats = kit.check_cache_stats()
            if stats is not None and stats.serving:
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(5):
            assert kit.check(bk.Scope(ORG, session_id="s1")).action == "continue"
        stats = kit.check_cache_stats()
        assert stats is not None and stats.hits >= 1, stats
        kit.disable_check_cache()


# -- the staleness canary ------------------------------------------------------------------------


async def beat_back_after(kit: bk.BudgetKit, moment: float) -> None:
    """Waits until a heartbeat sent after ``moment`` (time.monotonic()) came back: every push of
    a write acknowledged before ``moment`` was read by then (pushes arrive in order)."""
    cache = kit._check_cache
    assert cache is not None
    (channel,) = cache._channels.values()
    deadline = time.monotonic() + INVALIDATION_WAIT_S
    while channel.beat_seen <= moment:
        assert time.monotonic() < deadline, "no heartbeat came back"
        await asyncio.sleep(0.005)


async def test_the_canary_sees_a_lost_invalidation(real_redis: Redis) -> None:
    """The tracking connection loses the pushes of one write on purpose: the cache serves the
    state before it, the canary's background round trip finds the difference, counts it and
    the cache starts over (the next answers are the store's)."""
    clock = Clock()
    registry = CollectorRegistry()
    cached = bk.BudgetKit(real_redis, clock=clock, instruments=[bk.PrometheusMetrics(registry)])
    plain = bk.BudgetKit(real_redis, clock=clock)
    await cached.enable_check_cache(heartbeat_ms=20, canary_every=5)
    try:
        await warmed(cached, plain)
        tracker = cached._check_cache._tracker if cached._check_cache else None
        assert tracker is not None
        forward = tracker._on_keys
        tracker._on_keys = lambda keys: forward([k for k in keys if "!cache" in k])  # beats only
        await plain.debit(SCOPE, {"usd": 9})  # another client; its pushes are dropped
        await beat_back_after(cached, time.monotonic())
        tracker._on_keys = forward
        assert await cached.check(SCOPE) != await plain.check(SCOPE), "not stale: no test"
        deadline = time.monotonic() + INVALIDATION_WAIT_S
        while True:
            stats = cached.check_cache_stats()
            assert stats is not None
            if stats.canary_stale >= 1:
                break
            assert time.monotonic() < deadline, f"the canary never fired: {stats}"
            await cached.check(SCOPE)
            await asyncio.sleep(0.002)
        await serving(cached)
        await same_answers(cached, plain, SCOPE)
        assert stats.resets >= 1 and stats.canary_checks >= stats.canary_stale, stats
        assert registry.get_sample_value("budgetkit_check_cache_stale_total") >= 1
    finally:
        await cached.disable_check_cache()


async def test_the_canary_counts_nothing_stale_under_a_concurrent_writer(
    real_redis: Redis,
) -> None:
    """A canary on every hit while another client writes the scope every few milliseconds and
    the kit writes too: writes that race a hit are not counted, so nothing is stale."""
    cached = bk.BudgetKit(real_redis)
    plain = bk.BudgetKit(real_redis)
    quiet = bk.Scope(ORG, session_id="s9")  # no shared budget with SCOPE
    await cached.enable_check_cache(heartbeat_ms=10, canary_every=1)
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await plain.debit(SCOPE, {"usd": 0.0001})
            await asyncio.sleep(0.005)

    try:
        await budgets(plain)
        await plain.create_budget(ORG, "session", "s9", "usd", 10)
        await serving(cached)
        task = asyncio.ensure_future(writer())
        ends = time.monotonic() + 1.5
        while time.monotonic() < ends:
            for scope in (SCOPE, OTHER, quiet):
                await cached.check(scope)
            if random.random() < 0.05:
                await cached.debit(OTHER, {"usd": 0.0001})  # own writes fill from their reply
            await asyncio.sleep(0.001)
        stop.set()
        await task
        stats = cached.check_cache_stats()
    finally:
        stop.set()
        await cached.disable_check_cache()
    assert stats is not None and stats.hits > 100 and stats.invalidations > 0, stats
    assert stats.canary_checks >= 5 and stats.canary_stale == 0, stats


async def test_canary_every_is_validated(real_redis: Redis) -> None:
    kit = bk.BudgetKit(real_redis)
    for bad in (-1, True, 2.5, 10**10):
        with pytest.raises(bk.InvalidInput, match="canary_every"):
            await kit.enable_check_cache(canary_every=bad)  # type: ignore[arg-type]
        assert kit.check_cache_stats() is None


async def test_valid_until_is_the_earliest_hold_expiry_or_period_end(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time a check's reply stays valid by the clock alone (``valid_until_ms``) is exactly
    the earliest expiry of an outstanding hold or end of a current period among the scope's
    budgets, through random holds taken, committed, released and expiring, debits and time."""
    clock = Clock()
    kit = bk.BudgetKit(redis, clock=clock, batching=False)
    scope = bk.Scope(ORG, session_id="s1", user_id="u1")
    periodic = await kit.create_budget(
        ORG, "session", "s1", "usd", 10_000, period={"type": "duration", "seconds": 500}
    )
    plain = await kit.create_budget(ORG, "user", "u1", "usd", 10_000)
    scoped = kit.keys.scope(scope)
    rng = random.Random(14)
    holds: list[bk.Reservation] = []
    replies: list[Any] = []  # every reply parsed: the reserve's, commit's and debit's own
    parse = client_module.parse_reply

    def recorded(*args: Any, **kwargs: Any) -> Any:
        reply = parse(*args, **kwargs)
        replies.append(reply)
        return reply

    monkeypatch.setattr(client_module, "parse_reply", recorded)

    async def earliest() -> int:
        ends = []
        for budget_id in (periodic.id, plain.id):
            first = await redis.zrange(kit.keys.hold_index(ORG, budget_id), 0, 0, withscores=True)
            ends += [int(score) for _, score in first]
        record = await kit.get_budget(ORG, periodic.id)
        assert record.period_started_at is not None
        return min([*ends, int(record.period_started_at.timestamp() * 1000) + 500_000])

    for _ in range(150):
        replies.clear()
        step = rng.randrange(5)
        if step == 0:
            hold = await kit.reserve(scope, {"usd": 1}, ttl_seconds=rng.randint(1, 120))
            holds.append(hold)
        elif step == 1 and holds:
            hold = holds.pop(rng.randrange(len(holds)))
            with contextlib.suppress(bk.HoldExpired, bk.HoldNotFound):
                await kit.commit(hold, {"usd": 2})
        elif step == 2 and holds:
            hold = holds.pop(rng.randrange(len(holds)))
            with contextlib.suppress(bk.HoldExpired, bk.HoldNotFound):
                await kit.release(hold)
        elif step == 3:
            await kit.debit(scope, {"usd": 1})
        else:
            clock.advance(seconds=rng.randint(1, 60))
        truth = await earliest()
        assert step in (1, 2, 4) or any(r.valid_until_ms for r in replies), step
        for own in replies:  # a write's reply never outlasts the truth (a resolved hold: earlier)
            if own.valid_until_ms is not None:
                assert own.valid_until_ms <= truth, (step, own.valid_until_ms, truth)
                if step in (0, 3):  # a hold taken or a debit: exact
                    assert own.valid_until_ms == truth, (step, own.valid_until_ms, truth)
        reply = await kit._check_round_trip(scope, scoped)
        assert reply is not None and reply.valid_until_ms == await earliest(), step  # (purged)
