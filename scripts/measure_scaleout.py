#!/usr/bin/env python3
"""Measures what docs/deployment.md quotes: the cost of the durable mode (WAIT), what a hot
organization (one Cluster slot) can do against many organizations spread over the primaries,
and what a Sentinel failover loses without and with WAIT.

    python3 scripts/measure_scaleout.py [--quick] [--json PATH]

Starts its own private servers (127.0.0.1, free ports, temporary directories, stopped at the
end): a primary with one replica, a 3-primary Cluster, two Sentinel groups. About a minute;
``--quick`` about half. Numbers are for the machine it runs on; compare rows, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

import redis_server  # noqa: E402
from cluster_fixtures import DebitLoad, scope_budgets  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

import budgetkit as bk  # noqa: E402

NO_SYNC_DELAY = ["--repl-diskless-sync-delay", "0"]
T = TypeVar("T")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed_debits(
    kit: bk.BudgetKit, scopes: list[bk.Scope], tasks: int, seconds: float
) -> dict[str, float]:
    """``tasks`` concurrent loops debiting (round-robin over ``scopes``) for ``seconds``."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            scope = scopes[(worker + i) % len(scopes)]
            started = time.perf_counter()
            await kit.debit(scope, {"usd": 1})
            latencies.append(time.perf_counter() - started)
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(tasks)))
    elapsed = time.perf_counter() - started
    return {
        "ops_per_s": round(len(latencies) / elapsed),
        "p50_us": round(statistics.median(latencies) * 1e6),
        "p99_us": round(percentile(latencies, 0.99) * 1e6),
    }


async def wait_cost(seconds: float) -> list[dict[str, Any]]:
    """Debit latency and throughput with durable_replicas 0 and 1 (primary + 1 replica)."""
    rows = []
    with (
        redis_server.RedisServer(extra_args=NO_SYNC_DELAY) as primary,
        redis_server.RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]),
    ):
        await asyncio.to_thread(
            redis_server.wait_until,
            lambda: redis_server.info(primary.port, "replication")["connected_slaves"] == "1",
            "the replica to connect",
        )
        for durable in (0, 1):
            async with bk.BudgetKit.from_url(
                primary.url, durability=bk.Durability(durable) if durable else None
            ) as kit:
                org = f"org_wait_{durable}"
                scope, _ = await scope_budgets(kit, org, limit=10**9)
                await timed_debits(kit, [scope], 1, 0.3)  # warm-up (scripts loaded)
                for tasks in (1, 64):
                    row = await timed_debits(kit, [scope], tasks, seconds)
                    waits = kit._runtime.durability.waits if kit._runtime.durability else 0
                    row.update(mode="WAIT 1" if durable else "plain", tasks=tasks, waits=waits)
                    rows.append(row)
    return rows


async def hot_and_spread(seconds: float) -> dict[str, Any]:
    """Server time per debit on the hot org's primary (INFO commandstats), the per-primary
    spread of 64 orgs, and the client's throughput on one org vs 64."""
    with redis_server.LocalCluster(replicas=0) as cluster:
        async with bk.BudgetKit.from_url(cluster.url) as kit:
            hot_scope, _ = await scope_budgets(kit, "org_hot", limit=10**9)
            spread = [(await scope_budgets(kit, f"org_{i}", limit=10**9))[0] for i in range(64)]
            await timed_debits(kit, [hot_scope], 1, 0.3)
            for port in cluster.ports:
                redis_server.execute(port, "CONFIG", "RESETSTAT")
            hot = await timed_debits(kit, [hot_scope], 64, seconds)
            slot = kit.redis.keyslot(kit.keys.org_index("org_hot"))
            owner = cluster.slot_owner(slot).port
            stats = redis_server.info(owner, "commandstats").get("cmdstat_evalsha", "")
            fields = dict(item.split("=") for item in stats.split(","))
            usec = float(fields["usec_per_call"])
            spread_row = await timed_debits(kit, spread, 64, seconds)
            owners: dict[int, int] = {}
            for scope in spread:
                key = kit.keys.org_index(scope.organization_id)
                port = cluster.slot_owner(kit.redis.keyslot(key)).port
                owners[port] = owners.get(port, 0) + 1
    return {
        "server_us_per_debit": usec,
        "slot_ceiling_debits_per_s": round(1e6 / usec),
        "hot_org_client": hot,
        "spread_64_orgs_client": spread_row,
        "orgs_per_primary": sorted(owners.values()),
    }


async def under_load(
    load: DebitLoad, action: Callable[..., T], *args: Any
) -> tuple[T, float, float]:
    """Runs the blocking ``action(*args)`` in a thread once ``load`` has 300 debits
    acknowledged. Returns its result, when it began (perf_counter) and how long it took (s)."""
    await load.wait_for(300)
    started = time.perf_counter()
    result = await asyncio.to_thread(action, *args)
    return result, started, time.perf_counter() - started


async def rejoin_soon(old_port: int, new_port: int) -> None:
    """What Sentinel's next INFO round does within 10 s, here 0.5 s after the failover: the old
    primary becomes the new one's replica."""
    await asyncio.sleep(0.5)
    redis_server.execute(old_port, "REPLICAOF", "127.0.0.1", str(new_port))


async def sentinel_failover(durable: int, min_replicas: bool = False) -> dict[str, Any]:
    """Debits acknowledged and lost across a SENTINEL FAILOVER (6 workers). ``min_replicas``:
    the data nodes run with min-replicas-to-write 1, min-replicas-max-lag 1."""
    extra = ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "1"] if min_replicas else []
    with redis_server.SentinelGroup(extra_args=extra) as group:
        async with bk.BudgetKit.from_url(
            group.url, durability=bk.Durability(durable, 250) if durable else None
        ) as kit:
            org = "org_sentinel"
            scope, budgets = await scope_budgets(kit, org)
            old_port = group.primary_port()
            load = DebitLoad(kit, scope).start()
            try:
                new_port, started, failover_s = await under_load(load, group.failover)
                if durable or min_replicas:
                    await rejoin_soon(old_port, new_port)
                await asyncio.sleep(2.0)
                await load.wait_for(len(load.acked) + 300, timeout_s=60)
                elapsed = time.perf_counter() - started
            finally:
                await load.stop()
            new_primary = Redis(host="127.0.0.1", port=new_port)
            lost = 0
            for key in load.acked:
                lost += not await new_primary.exists(kit.keys.idempotency(org, "debit", key))
            await new_primary.aclose()
            return {
                "mode": ("WAIT 1" if durable else "plain")
                + (", min-replicas-to-write 1" if min_replicas else ""),
                "acknowledged": len(load.acked),
                "lost": lost,
                "failover_s": round(failover_s, 2),
                "load_s": round(elapsed, 2),
                "retried": dict(load.errors),
                "budgets": len(budgets),
            }


async def cluster_crash() -> dict[str, Any]:
    """Debits acknowledged and lost when the hot org's primary is SIGKILLed (plain mode)."""
    with redis_server.LocalCluster(node_timeout_ms=1000) as cluster:
        async with bk.BudgetKit.from_url(cluster.url) as kit:
            org = "org_crash"
            scope, _ = await scope_budgets(kit, org)
            primary = cluster.slot_owner(kit.redis.keyslot(kit.keys.org_index(org)))
            load = DebitLoad(kit, scope).start()
            try:
                _, _, outage_s = await under_load(load, cluster.crash_primary, primary.port)
                await load.wait_for(len(load.acked) + 300, timeout_s=60)
            finally:
                await load.stop()
            lost = 0
            for key in load.acked:
                lost += not await kit.redis.exists(kit.keys.idempotency(org, "debit", key))
            return {
                "acknowledged": len(load.acked),
                "lost": lost,
                "outage_s": round(outage_s, 2),
                "retried": dict(load.errors),
            }


async def main(quick: bool) -> dict[str, Any]:
    seconds = 1.0 if quick else 3.0
    results: dict[str, Any] = {}
    results["wait_cost"] = await wait_cost(seconds)
    print("\n## durable mode: WAIT cost (primary + 1 replica, loopback)\n")
    print("| mode | tasks | debits/s | p50 µs | p99 µs | WAIT commands |")
    print("|---|---|---|---|---|---|")
    for r in results["wait_cost"]:
        print(
            f"| {r['mode']} | {r['tasks']} | {r['ops_per_s']} | {r['p50_us']} | {r['p99_us']} "
            f"| {r['waits']} |"
        )
    results["cluster"] = cl = await hot_and_spread(seconds)
    print("\n## Cluster: one hot organization vs 64 (3 primaries)\n")
    print(f"- server time per 3-budget debit: {cl['server_us_per_debit']} µs")
    print(f"- one slot's ceiling: ≈ {cl['slot_ceiling_debits_per_s']} debits/s")
    print(f"- orgs per primary: {cl['orgs_per_primary']}")
    print(f"- one client, hot org, 64 tasks: {cl['hot_org_client']}")
    print(f"- one client, 64 orgs, 64 tasks: {cl['spread_64_orgs_client']}")
    results["sentinel"] = [
        await sentinel_failover(0),
        await sentinel_failover(0, min_replicas=True),
        await sentinel_failover(1),
    ]
    print("\n## Sentinel failover under load (6 workers)\n")
    print("| mode | acknowledged | lost | failover s | retried errors |")
    print("|---|---|---|---|---|")
    for r in results["sentinel"]:
        print(
            f"| {r['mode']} | {r['acknowledged']} | {r['lost']} | {r['failover_s']} "
            f"| {r['retried']} |"
        )
    results["cluster_crash"] = crash = await cluster_crash()
    print("\n## Cluster: the hot org's primary SIGKILLed under load (plain mode, 6 workers)\n")
    print(
        f"- {crash['acknowledged']} debits acknowledged, {crash['lost']} lost; replica promoted "
        f"and old primary back as its replica in {crash['outage_s']} s; retried {crash['retried']}"
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    measured = asyncio.run(main(args.quick))
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2) + "\n")
