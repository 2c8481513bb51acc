# ruff: noqa: F811  (fixtures imported from cluster_fixtures are parameters by the same name)
"""Replication: a Sentinel failover under load (the client follows the new primary), and the
opt-in durable mode (WAIT after each mutation) on a primary with replicas, plain or Sentinel.

Servers: the Sentinel groups come from scripts/redis_server.py (1 primary + 1 replica + 3
sentinels by default), the plain primary/replica pairs from conftest's redis_server_factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cluster_fixtures import (  # noqa: F401  (fixtures: used by name)
    DebitLoad,
    assert_books_exact,
    scope_budgets,
    sentinel_factory,
)
from conftest import redis_server
from redis.asyncio import Redis
from support import all_entries, assert_invariant

import budgetkit as bk
from budgetkit._core.durability import DurableWriter
from budgetkit._core.errors import ReplicationTimeout

pytestmark = pytest.mark.real
NO_SYNC_DELAY = ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
TIMEOUT_MS = 1000  # Durability.timeout_ms: generous, the CI machine is shared


async def _wait_replica_synced(primary: Redis, replicas: int = 1, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info: Any = await primary.info("replication")
        if int(info.get("connected_slaves", 0)) >= replicas and await primary.wait(replicas, 100):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replica did not sync")


@contextlib.contextmanager
def stopped(server: Any) -> Iterator[None]:
    """SIGSTOP a server for the block (SIGCONT in finally): it stops acknowledging."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


# -- Sentinel -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_sentinel_failover_the_client_continues_on_the_new_primary(
    sentinel_factory: Callable[..., Any],
) -> None:
    """SENTINEL FAILOVER while 6 workers debit through ``redis+sentinel://``: the client moves
    to the promoted replica by itself (no error reaches the workers), the books on the new
    primary are consistent, every debit acknowledged before the failover and every one
    acknowledged after the client moved is there. Debits the *old* primary acknowledged
    between the promotion and the moment the client left it are lost in plain mode: counted
    and printed (docs/deployment.md); the durable test below loses none."""
    group = sentinel_factory()
    org = "org_sentinel"
    async with bk.BudgetKit.from_url(group.url) as kit:
        assert kit._runtime.topology == "sentinel"
        scope, budgets = await scope_budgets(kit, org)
        old_port = group.primary_port()
        load = DebitLoad(kit, scope).start()
        try:
            await load.wait_for(200)
            before = len(load.acked)
            started = time.monotonic()
            new_port = await asyncio.to_thread(group.failover)
            failover_s = time.monotonic() - started
            await asyncio.sleep(2.5)  # > SENTINEL_REFRESH_S: the client has left the old one
            settled = len(load.acked)
            await load.wait_for(settled + 200)
        finally:
            await load.stop()
        assert new_port != old_port
        address = await kit.redis.connection_pool.get_master_address()
        assert address == ("127.0.0.1", new_port)
        new_primary = Redis(host="127.0.0.1", port=new_port)
        try:
            present = [
                bool(await new_primary.exists(kit.keys.idempotency(org, "debit", key)))
                for key in load.acked
            ]
        finally:
            await new_primary.aclose()
        assert all(present[:before]), "a debit acknowledged before the failover is lost"
        assert all(present[settled:]), "a debit acknowledged after the switch is not there"
        for budget in budgets:
            entries = await all_entries(kit, org, budget.id)
            assert len(entries) == present.count(True)
            await assert_invariant(kit, org, budget.id, 1_000_000)
        print(
            f"\nsentinel failover in {failover_s:.2f} s under load: {len(load.acked)} debits "
            f"acknowledged, {present.count(False)} of them by the demoted primary (lost); "
            f"retried errors {load.errors}, runtime retries {kit._runtime.failover_retries}"
        )


@pytest.mark.slow
async def test_check_cache_follows_a_sentinel_failover(
    sentinel_factory: Callable[..., Any],
) -> None:
    """The check cache across SENTINEL FAILOVER: its tracking connection is left on the
    demoted server, whose pushes no longer follow the writes; the heartbeats stop coming back,
    nothing is served from memory meanwhile, the tracker reconnects to the new primary and the
    cache serves again — every answer equal to an uncached client's."""
    group = sentinel_factory()
    org = "org_sentinel_cache"
    async with (
        bk.BudgetKit.from_url(group.url) as cached,
        bk.BudgetKit.from_url(group.url) as plain,
    ):
        scope, _ = await scope_budgets(plain, org)
        await cached.enable_check_cache(heartbeat_ms=20)
        deadline = time.monotonic() + 10
        while True:
            await cached.check(scope)
            stats = cached.check_cache_stats()
            if stats is not None and stats.serving:
                break
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.02)
        await cached.check(scope)
        await asyncio.to_thread(group.failover)
        deadline = time.monotonic() + 20
        while True:  # another client writes on the new primary; the cache must follow
            await plain.debit(scope, {"usd": 0.001})
            expected = await plain.check_tool(scope)
            await asyncio.sleep(0.05)
            stats = cached.check_cache_stats()
            answer = await cached.check_tool(scope)
            assert stats is not None
            if stats.resets >= 1 and stats.serving and answer == expected:
                break
            assert time.monotonic() < deadline, stats
        before = cached.check_cache_stats()
        for _ in range(20):
            await cached.debit(scope, {"usd": 0.001})  # own writes, read back at once
            assert await cached.check_tool(scope) == await plain.check_tool(scope)
            assert await cached.check(scope) == await plain.check(scope)
        after = cached.check_cache_stats()
        assert before is not None and after is not None and after.hits > before.hits, after


@pytest.mark.slow
async def test_sentinel_failover_durable_keeps_every_acknowledged_debit(
    sentinel_factory: Callable[..., Any],
) -> None:
    """The same failover in durable mode (WAIT 1 with the one replica): after the promotion
    the old primary has no replica, so what it still applies gets no acknowledgement and
    raises ReplicationTimeout; retried with their keys, those debits land on the new primary
    once it has a replica again (Sentinel turns the old primary into one). Every acknowledged
    debit is on the new primary exactly once."""
    group = sentinel_factory()
    org = "org_sentinel_durable"
    async with bk.BudgetKit.from_url(group.url, durability=bk.Durability(1, 250)) as kit:
        scope, budgets = await scope_budgets(kit, org)
        old_port = group.primary_port()
        load = DebitLoad(kit, scope).start()
        try:
            await load.wait_for(200)
            started = time.monotonic()
            new_port = await asyncio.to_thread(group.failover)
            await asyncio.sleep(0.5)
            # What Sentinel does at its next INFO round (up to 10 s later): the old primary
            # becomes the new one's replica (its unacknowledged writes are discarded).
            redis_server.execute(old_port, "REPLICAOF", "127.0.0.1", str(new_port))
            await load.wait_for(len(load.acked) + 200, timeout_s=60)
            resumed_s = time.monotonic() - started
        finally:
            await load.stop()
        assert await kit.redis.connection_pool.get_master_address() == ("127.0.0.1", new_port)
        await assert_books_exact(kit, org, budgets, load.acked)
        print(
            f"\nsentinel failover, durable: {len(load.acked)} debits acknowledged, none lost; "
            f"durable writes resumed {resumed_s:.1f} s after the failover started; "
            f"retried errors {load.errors}, runtime retries {kit._runtime.failover_retries}"
        )


# -- durable mode on a primary and its replica ------------------------------------------------


async def test_durable_mode_waits_and_reports_a_missing_acknowledgement(
    redis_server_factory: Callable[..., Any],
) -> None:
    """WAIT 1 after each mutation: with the replica up a debit succeeds; with the replica
    stopped it raises ReplicationTimeout after its timeout_ms although the primary applied
    it; retrying with the same key keeps failing until the replica is back, then replays —
    applied exactly once."""
    primary_server = redis_server_factory(extra_args=NO_SYNC_DELAY)
    replica_server = redis_server_factory(
        extra_args=["--replicaof", "127.0.0.1", str(primary_server.port)]
    )
    primary = Redis.from_url(primary_server.url)
    try:
        await _wait_replica_synced(primary)
        async with bk.BudgetKit.from_url(
            primary_server.url, durability=bk.Durability(1, TIMEOUT_MS)
        ) as kit:
            org = "org_durable"
            scope, budgets = await scope_budgets(kit, org, limit=100)
            await kit.debit(scope, {"usd": 1}, idempotency_key="k1")
            durability = kit._runtime.durability
            assert durability is not None and durability.waits >= 4  # 3 creates + 1 debit
            with stopped(replica_server):
                started = time.monotonic()
                with pytest.raises(ReplicationTimeout) as caught:
                    await kit.debit(scope, {"usd": 2}, idempotency_key="k2")
                assert TIMEOUT_MS / 1000 * 0.9 < time.monotonic() - started < 5.0
                assert isinstance(caught.value, bk.OutcomeUnknown)
                assert "0 of 1 replicas" in str(caught.value)
                # applied on the primary: the replay finds it, and still cannot confirm it
                with pytest.raises(ReplicationTimeout):
                    await kit.debit(scope, {"usd": 2}, idempotency_key="k2")
                assert durability.markers >= 1
            deadline = time.monotonic() + 10  # the resumed replica catches up, then acks
            while True:
                try:
                    replayed = await kit.debit(scope, {"usd": 2}, idempotency_key="k2")
                    break
                except ReplicationTimeout:
                    assert time.monotonic() < deadline
            assert replayed.replayed
            assert kit.counters.outcome_unknown >= 2
            for budget in budgets:
                assert (await kit.get_budget(org, budget.id)).balance == 97
                await assert_invariant(kit, org, budget.id, 100)
    finally:
        await primary.aclose()


async def test_durable_mode_batches_share_one_wait(
    redis_server_factory: Callable[..., Any],
) -> None:
    primary_server = redis_server_factory(extra_args=NO_SYNC_DELAY)
    redis_server_factory(extra_args=["--replicaof", "127.0.0.1", str(primary_server.port)])
    primary = Redis.from_url(primary_server.url)
    try:
        await _wait_replica_synced(primary)
        async with bk.BudgetKit.from_url(primary_server.url, durability=bk.Durability(1)) as kit:
            org = "org_durable_batch"
            scope, budgets = await scope_budgets(kit, org, limit=1000)
            durability = kit._runtime.durability
            assert durability is not None
            before = durability.waits
            checks = [kit.check(scope) for _ in range(8)]
            debits = [kit.debit(scope, {"usd": 1}, idempotency_key=f"b{i}") for i in range(64)]
            await asyncio.gather(*debits, *checks)
            assert kit._batcher is not None and kit._batcher.batches >= 1
            assert durability.waits - before < 64, "batched debits share their WAIT"
            await assert_books_exact(kit, org, budgets, [f"b{i}" for i in range(64)], limit=1000)
    finally:
        await primary.aclose()


async def test_durable_arguments_are_validated(fake_redis: Any) -> None:
    for bad in (-1, 0, 17, True):
        with pytest.raises(bk.InvalidInput):
            bk.Durability(bad)
    for timeout in (0, 60_001, 1.5):
        with pytest.raises(bk.InvalidInput):
            bk.Durability(1, timeout_ms=timeout)
    with pytest.raises(bk.InvalidInput, match=r"durability must be a budgetkit\.Durability"):
        bk.BudgetKit(fake_redis, durability=1)  # type: ignore[arg-type]
    assert bk.BudgetKit(fake_redis)._runtime.durability is None
    durability = DurableWriter(bk.Durability(2, 250))
    assert durability.wait_command() == ["WAIT", 2, 250]
    assert DurableWriter(bk.Durability(1, 100, aof=True)).wait_command() == ["WAITAOF", 0, 1, 100]
    assert durability.acknowledged(2) == 2 and durability.acknowledged([1, 3]) == 3


async def test_durable_aof_needs_waitaof(redis_server_factory: Callable[..., Any]) -> None:
    """WAITAOF exists from Redis 7.2: on an older server the first mutation is refused before
    anything is sent."""
    server = redis_server_factory()
    async with bk.BudgetKit.from_url(server.url, durability=bk.Durability(1, aof=True)) as kit:
        version = str((await kit.redis.info("server"))["redis_version"])
        if tuple(int(p) for p in version.split(".")[:2]) >= (7, 2):
            pytest.skip(f"Redis {version} has WAITAOF")
        with pytest.raises(bk.InvalidInput, match="WAITAOF"):
            await kit.create_budget("org_aof", "session", "s", "usd", 1)
        assert await kit.list_budgets("org_aof") == []
