"""Read scaling: check and check_tool served by a replica with a read-only script."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from support import ManualClock

import budgetkit as bk

ORG = "org_r"


async def _wait_replica_up(replica: Redis, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        info: Any = await replica.info("replication")
        if info.get("master_link_status") == "up":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replica did not sync")


@pytest.mark.real
async def test_checks_from_a_replica(redis_server_factory: Any) -> None:
    primary_server = redis_server_factory()
    replica_server = redis_server_factory(
        extra_args=["--replicaof", "127.0.0.1", str(primary_server.port)]
    )
    primary, replica = Redis.from_url(primary_server.url), Redis.from_url(replica_server.url)
    await _wait_replica_up(replica)
    clock = ManualClock()
    writer = bk.BudgetKit(primary, clock=clock)
    reader = bk.BudgetKit(primary, clock=clock, read_replica=replica)
    scope = bk.Scope(organization_id=ORG, session_id="s1")
    b = await writer.create_budget(
        ORG, "session", "s1", "usd", 10, period={"type": "duration", "seconds": 60}
    )
    await writer.debit(scope, {"usd": 9})
    await primary.wait(1, 1000)
    assert (await reader.check(scope)).action == "warn"
    await writer.debit(scope, {"usd": 1})
    await primary.wait(1, 1000)
    result = await reader.check(scope)
    assert result.action == "stop" and result.budget_id == b.id
    # an elapsed period is evaluated on the replica without writing
    clock.advance(seconds=61)
    assert (await reader.check(scope)).action == "continue"
    assert (await reader.check_tool(scope)).budgets[0].balance == 10
    assert (await replica.hget(writer.keys.budget(ORG, b.id), "bal")) == b"0"  # nothing written
    assert (await writer.get_budget(ORG, b.id)).balance == 10  # the primary rolls over for real

    # staleness: time from an acknowledged debit on the primary to a replica check that shows it
    lags_ms = []
    for i in range(20):
        await writer.update_budget(ORG, b.id, limit=10 + i)
        await writer.debit(scope, {"usd": 10 + i})  # exhausts the budget again
        start = time.perf_counter()
        for _ in range(100_000):  # bounded: a replica on loopback catches up in milliseconds
            if (await reader.check(scope)).action == "stop":
                break
        lags_ms.append((time.perf_counter() - start) * 1000)
        await writer.top_up(ORG, b.id, 10 + i)
    lags_ms.sort()
    print(
        f"\nreplica staleness after an acknowledged debit: p50 {lags_ms[10]:.2f} ms, "
        f"max {lags_ms[-1]:.2f} ms (20 samples, loopback)"
    )
    assert lags_ms[-1] < 1000
    await writer.aclose()
    await replica.aclose()
