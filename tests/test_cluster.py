# ruff: noqa: F811  (fixtures imported from cluster_fixtures are parameters by the same name)
"""Redis Cluster (3 primaries + 3 replicas, started by the fixtures): the core behaviour tests
re-run on it, URL parsing, the migration guard, a slot migrated to a node added under load, a
primary failover under load (plain and durable), and the check cache (a tracking connection per
primary) across random operations, killed tracking connections, a slot migration and a failover.

The core tests come from ``tests/test_core.py`` unchanged (``from test_core import *``): this
module overrides the ``redis``, ``redis_snapshot`` and ``kit`` fixtures they use, so each runs
with a ``RedisCluster`` client (async and through the blocking facade).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from cluster_fixtures import (  # noqa: F401  (fixtures: used by name)
    DebitLoad,
    assert_books_exact,
    cluster_client,
    cluster_client_for,
    cluster_factory,
    local_cluster,
    redis_cluster,
    scope_budgets,
    snapshot_cluster,
)
from redis.asyncio.cluster import RedisCluster
from support import AsyncOverSync, ManualClock, assert_invariant
from test_core import *  # noqa: F403  (the core behaviour tests, collected here again)

import budgetkit as bk
import budgetkit.sync as bk_sync
from budgetkit._core.runtime import guard_key, load_scripts

pytestmark = pytest.mark.real


# -- the core behaviour tests on the cluster -------------------------------------------------


@pytest_asyncio.fixture
async def redis(cluster_client: RedisCluster) -> AsyncIterator[RedisCluster]:
    """Overrides conftest's ``redis``: the core tests' raw client is the cluster client."""
    yield cluster_client


@pytest.fixture
def redis_snapshot() -> Callable[..., Any]:
    """Overrides conftest's ``redis_snapshot``: every key of every primary."""
    return snapshot_cluster


@pytest_asyncio.fixture(params=["async", "sync"])
async def kit(
    request: pytest.FixtureRequest, redis: RedisCluster, clock: ManualClock, local_cluster: Any
) -> AsyncIterator[Any]:
    """Overrides test_core's ``kit``: the async client on the cluster client, and the blocking
    facade built from the ``redis+cluster://`` URL."""
    if request.param == "async":
        yield bk.BudgetKit(redis, clock=clock)
        return
    sync_kit = bk_sync.BudgetKit.from_url(local_cluster.url, clock=clock)
    yield AsyncOverSync(sync_kit)
    await asyncio.to_thread(sync_kit.close)


# -- URLs -------------------------------------------------------------------------------------


async def test_urls_build_cluster_and_sentinel_clients() -> None:
    from budgetkit._core.urls import client_from_url

    cluster = client_from_url("redis+cluster://:s3cret@127.0.0.1:7000,node-b:7001")
    try:
        assert isinstance(cluster, RedisCluster)
        assert [(n.host, n.port) for n in cluster.startup_nodes] == [
            ("127.0.0.1", 7000),
            ("node-b", 7001),
        ]
        assert cluster.connection_kwargs["password"] == "s3cret"
        assert cluster.retry.get_retries() == 0
    finally:
        await cluster.aclose()
    master = client_from_url("redis+sentinel://u:p%40ss@127.0.0.1:26379,127.0.0.1:26380/svc")
    try:
        pool = master.connection_pool
        assert pool.service_name == "svc" and pool.is_master
        assert pool.connection_kwargs["password"] == "p@ss"
        assert pool.connection_kwargs["username"] == "u"
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    finally:
        await master.aclose()
    for bad in (
        "redis+cluster://",
        "redis+cluster://host",
        "redis+cluster://h:1/3",
        "redis+sentinel://h:1",
        "redis+sentinel://h:1/a/b",
        "redis+cluster://h:1?x=1",
        "memcached://h:1",
    ):
        with pytest.raises(bk.InvalidInput):
            client_from_url(bad)


async def test_from_url_runs_on_the_cluster(local_cluster: Any, cluster_client: Any) -> None:
    async with bk.BudgetKit.from_url(local_cluster.url) as kit:
        assert kit._runtime.topology == "cluster"
        orgs = [f"org_{i}" for i in range(12)]  # spread over the 3 primaries
        for org in orgs:
            await kit.create_budget(org, "session", "s", "usd", 10)
            await kit.debit(bk.Scope(organization_id=org, session_id="s"), {"usd": 3})
        slots = [cluster_client.keyslot(kit.keys.org_index(org)) for org in orgs]
        owners = {local_cluster.slot_owner(slot).port for slot in slots}
        assert len(owners) == 3, owners
        for org in orgs:
            (budget,) = await kit.list_budgets(org)
            assert budget.balance == 7
            await assert_invariant(kit, org, budget.id, 10)


async def test_migrate_loads_the_library_on_every_primary(
    local_cluster: Any, cluster_client: Any
) -> None:
    from redis.asyncio import Redis

    async with bk.BudgetKit.from_url(local_cluster.url) as kit:
        result = await kit.migrate()
        assert result.format_after == bk.STORE_FORMAT
        assert await cluster_client.get(kit.keys.store_format()) == str(bk.STORE_FORMAT).encode()
        for node in cluster_client.get_primaries():
            client = Redis(host=node.host, port=node.port)
            try:
                listed = await client.execute_command(
                    "FUNCTION", "LIST", "LIBRARYNAME", "budgetkit_*"
                )
                names = {library[b"library_name"].decode() for library in listed}
            finally:
                await client.aclose()
            assert result.library in names, node.port
        await kit.create_budget("org_m", "session", "s", "usd", 10)
        assert (await kit.debit(bk.Scope("org_m", session_id="s"), {"usd": 1})).entries


# -- the migration guard ------------------------------------------------------------------------


async def _node_snapshot(port: int) -> dict[bytes, bytes]:
    """DUMP of every key one node holds (ASKING first: a node importing a slot redirects
    commands for it otherwise)."""
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=port, single_connection_client=True)
    try:
        out: dict[bytes, bytes] = {}
        for key in [k async for k in client.scan_iter(count=1000)]:
            await client.execute_command("ASKING")
            out[key] = await client.dump(key) or b""
        return out
    finally:
        await client.aclose()


async def test_calls_wait_while_the_slot_is_split_and_unguarded_scripts_would_not(
    cluster_factory: Callable[..., Any],
) -> None:
    """A slot in migration with some of the org's keys moved: budgetkit's guarded calls are
    refused (TRYAGAIN: nothing written on either node) and run once the slot has moved. The
    same script without the guard is what Redis does not protect: it writes the budget, then
    fails at the ledger key that already moved — a partial write."""
    cluster = cluster_factory(replicas=0)
    clock = ManualClock()
    org = "org_split"
    async with bk.BudgetKit.from_url(cluster.url, clock=clock) as kit:
        kit._runtime.failover_retry_s = 0.3  # give up quickly: the slot stays split here
        scope, _ = await scope_budgets(kit, org)
        period = {"type": "duration", "seconds": 60}
        rolling = await kit.create_budget(org, "session", "sess_load", "tokens", 100, period=period)
        await kit.debit(scope, {"usd": 1, "tokens": 85})  # a warning: the event stream exists
        slot = kit.redis.keyslot(kit.keys.org_index(org))
        source = cluster.slot_owner(slot)
        target = next(n for n in cluster.primaries() if n.port != source.port)
        cluster.begin_migration(slot, target.port)
        cluster.move_keys(source.port, target.port, [kit.keys.ledger(org, rolling.id)])
        before = (await _node_snapshot(source.port), await _node_snapshot(target.port))

        with pytest.raises(bk.BudgetUnavailable) as refused:
            await kit.debit(scope, {"usd": 1}, idempotency_key="during")
        assert not isinstance(refused.value, bk.OutcomeUnknown)
        clock.advance(seconds=61)  # a check would now roll the tokens budget over (a write)
        assert (await kit.check(scope)).error_code == "budget_unavailable"
        after = (await _node_snapshot(source.port), await _node_snapshot(target.port))
        assert after == before, "a refused call wrote something"

        # Without the guard (the raw script, keys as budgetkit declares them minus the guard):
        unguarded = load_scripts()["check"]
        raw = cluster_client_for([source.port])
        keys = [kit.keys.subject(org, "session", "sess_load"), kit.keys.events(org)]
        args = [kit.keys.org(org), str(int(clock.now.timestamp() * 1000)), "ledger_" + "0" * 30]
        try:
            await raw.initialize()
            node = raw.get_node("127.0.0.1", source.port)
            with pytest.raises(Exception, match="non local key"):
                await raw.execute_command(
                    "EVAL", unguarded.source, len(keys), *keys, *args, target_nodes=node
                )
        finally:
            await raw.aclose()
        partial = await _node_snapshot(source.port)
        budget_key = kit.keys.budget(org, rolling.id).encode()
        assert partial[budget_key] != before[0][budget_key], "expected the unguarded partial write"
        assert guard_key(kit.keys.org_index(org)).encode() not in partial


@pytest.mark.slow
async def test_slot_migration_to_a_new_node_under_load_loses_and_duplicates_nothing(
    cluster_factory: Callable[..., Any],
) -> None:
    """A node is added (no slots, no functions), then the hot org's slot is migrated to it key
    batch by key batch while 6 workers debit the org: every acknowledged debit is in the books
    exactly once, the balances are exact, and the new node got the library transparently."""
    cluster = cluster_factory()
    org = "org_hot"
    async with bk.BudgetKit.from_url(cluster.url) as kit:
        scope, budgets = await scope_budgets(kit, org)
        slot = kit.redis.keyslot(kit.keys.org_index(org))
        new_port = await asyncio.to_thread(cluster.add_node)
        load = DebitLoad(kit, scope).start()
        try:
            await load.wait_for(300)
            started = time.monotonic()
            moved = await asyncio.to_thread(
                cluster.migrate_slot, slot, new_port, batch=10, pause_s=0.002
            )
            migration_s = time.monotonic() - started
            during = len(load.acked)
            await load.wait_for(during + 300)
        finally:
            await load.stop()
        assert cluster.slot_owner(slot).port == new_port
        await assert_books_exact(kit, org, budgets, load.acked)
        assert kit._runtime.reloads >= 1, "the new node lacked the library: not found, then loaded"
        print(
            f"\nmigrated {moved} keys in {migration_s:.2f} s under load; "
            f"{len(load.acked)} debits acknowledged, retried errors {load.errors}, "
            f"runtime retries {kit._runtime.failover_retries}, reloads {kit._runtime.reloads}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("durable", [0, 1], ids=["plain", "durable"])
async def test_primary_failover_under_load_keeps_every_acknowledged_debit(
    cluster_factory: Callable[..., Any], durable: int
) -> None:
    """CLUSTER FAILOVER on the hot org's replica while 6 workers debit it, with every node at
    min-replicas-to-write 1: every acknowledged debit is on the new primary exactly once (plain:
    a manual failover waits for the replica to catch up; durable: WAIT 1 after each debit),
    and the new primary already has the function library (Redis replicates it): no load."""
    cluster = cluster_factory(extra_args=["--min-replicas-to-write", "1"])
    org = "org_failover"
    async with bk.BudgetKit.from_url(
        cluster.url, durability=bk.Durability(durable) if durable else None
    ) as kit:
        scope, budgets = await scope_budgets(kit, org)
        slot = kit.redis.keyslot(kit.keys.org_index(org))
        primary = cluster.slot_owner(slot)
        replica = cluster.replica_of(primary.port)
        load = DebitLoad(kit, scope).start()
        try:
            await load.wait_for(300)
            started = time.monotonic()
            await asyncio.to_thread(cluster.failover, replica.port)
            failover_s = time.monotonic() - started
            during = len(load.acked)
            await load.wait_for(during + 300)
        finally:
            await load.stop()
        assert cluster.slot_owner(slot).port == replica.port
        await assert_books_exact(kit, org, budgets, load.acked)
        assert kit._runtime.reloads == 0, "the promoted replica had the library"
        waits = kit._runtime.durability.waits if kit._runtime.durability else 0
        print(
            f"\nfailover ({'durable' if durable else 'plain'}) in {failover_s:.2f} s under load: "
            f"{len(load.acked)} debits acknowledged, retried errors {load.errors}, "
            f"runtime retries {kit._runtime.failover_retries}, WAITs {waits}"
        )


@pytest.mark.slow
async def test_primary_crash_under_load_durable_loses_no_acknowledged_debit(
    cluster_factory: Callable[..., Any],
) -> None:
    """SIGKILL of the hot org's primary while 6 workers debit it in durable mode (WAIT 1): the
    replica takes over after cluster-node-timeout, the killed node comes back as its replica,
    and every debit acknowledged before, during and after is on the new primary exactly once.
    (Without WAIT, the debits acknowledged but not yet replicated when the primary died are
    lost: docs/deployment.md.)"""
    cluster = cluster_factory(node_timeout_ms=1000)
    org = "org_crash"
    async with bk.BudgetKit.from_url(cluster.url, durability=bk.Durability(1, 500)) as kit:
        scope, budgets = await scope_budgets(kit, org)
        slot = kit.redis.keyslot(kit.keys.org_index(org))
        primary = cluster.slot_owner(slot)
        load = DebitLoad(kit, scope).start()
        try:
            await load.wait_for(300)
            started = time.monotonic()
            new_port = await asyncio.to_thread(cluster.crash_primary, primary.port)
            outage_s = time.monotonic() - started
            during = len(load.acked)
            await load.wait_for(during + 300)
        finally:
            await load.stop()
        assert cluster.slot_owner(slot).port == new_port != primary.port
        await assert_books_exact(kit, org, budgets, load.acked)
        print(
            f"\nprimary killed, replica promoted and old primary back in {outage_s:.2f} s: "
            f"{len(load.acked)} debits acknowledged, retried errors {load.errors}, "
            f"runtime retries {kit._runtime.failover_retries}"
        )


def test_cluster_helper_parses_cluster_nodes() -> None:
    text = (
        "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [93->-b2]\n"
        "b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 93\n"
        "c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n"
    )
    nodes = redis_cluster.parse_cluster_nodes(text)
    assert [(n.node_id, n.port, n.role, n.slots) for n in nodes] == [
        ("a1", 7000, "master", ((0, 5460),)),
        ("b2", 7001, "master", ((5461, 10922), (93, 93))),
        ("c3", 7002, "slave", ()),
    ]


# -- the check cache on the cluster (issue 17) ---------------------------------------------------

CACHE_WAIT_S = 3.0  # generous: an invalidation takes well under a millisecond on loopback


def owners_of(cluster: Any, client: RedisCluster, kit: bk.BudgetKit, orgs: list[str]) -> list[int]:
    """The port of the primary that owns each organization's slot."""
    return [cluster.slot_owner(client.keyslot(kit.keys.org_index(org))).port for org in orgs]


def orgs_on_every_primary(cluster: Any, client: RedisCluster, kit: bk.BudgetKit) -> list[str]:
    """One organization per primary."""
    found: dict[int, str] = {}
    candidates = [f"org_cc{i}" for i in range(64)]
    for org, port in zip(candidates, owners_of(cluster, client, kit, candidates), strict=True):
        found.setdefault(port, org)
    assert len(found) == len(cluster.primaries()), found
    return list(found.values())


async def scope_with_budgets(kit: bk.BudgetKit, org: str) -> bk.Scope:
    """A scope of ``org`` with a session and a user budget."""
    await kit.create_budget(org, "session", "s1", "usd", 50, soft_limit=40)
    await kit.create_budget(org, "user", "u1", "usd", 80)
    return bk.Scope(organization_id=org, session_id="s1", user_id="u1")


async def answered_from_memory(kit: bk.BudgetKit, scope: bk.Scope) -> None:
    """Checks ``scope`` until the cache answers it from memory (tracking proven on the org's
    primary, the org tracked there, the scope filled)."""
    deadline = time.monotonic() + CACHE_WAIT_S
    while True:
        before = kit.check_cache_stats()
        await kit.check(scope)
        after = kit.check_cache_stats()
        assert before is not None and after is not None
        if after.hits > before.hits:
            return
        assert time.monotonic() < deadline, f"never answered from memory: {after}"
        await asyncio.sleep(0.01)


async def agree(cached: bk.BudgetKit, plain: bk.BudgetKit, scope: bk.Scope) -> None:
    assert await cached.check(scope) == await plain.check(scope)
    assert await cached.check_tool(scope) == await plain.check_tool(scope)


async def agree_soon(cached: bk.BudgetKit, plain: bk.BudgetKit, scope: bk.Scope) -> float:
    """Another client wrote: seconds until the cached kit's answer is the store's (bounded)."""
    expected = await plain.check_tool(scope)
    started = time.monotonic()
    while await cached.check_tool(scope) != expected:
        assert time.monotonic() - started < CACHE_WAIT_S, "the write never reached the cache"
        await asyncio.sleep(0.001)
    return time.monotonic() - started


def tracking_channels(kit: bk.BudgetKit) -> dict[str, Any]:
    cache = kit._check_cache
    assert cache is not None
    return dict(cache._channels)


@contextlib.asynccontextmanager
async def kit_pair(url: str) -> AsyncIterator[tuple[bk.BudgetKit, bk.BudgetKit]]:
    """Two kits on the cluster at ``url`` (two clients), one manual clock: the one whose check
    cache a test enables, and an uncached one (another client)."""
    clock = ManualClock()
    async with (
        bk.BudgetKit.from_url(url, clock=clock) as cached,
        bk.BudgetKit.from_url(url, clock=clock) as plain,
    ):
        yield cached, plain


@pytest_asyncio.fixture
async def cache_kits(
    local_cluster: Any, cluster_client: RedisCluster
) -> AsyncIterator[tuple[bk.BudgetKit, bk.BudgetKit]]:
    """A kit with the check cache on the cluster and an uncached kit (another client)."""
    async with kit_pair(local_cluster.url) as (cached, plain):
        await cached.enable_check_cache(heartbeat_ms=20, canary_every=50)
        yield cached, plain


async def test_check_cache_on_the_cluster_agrees_with_an_uncached_kit(
    local_cluster: Any,
    cluster_client: RedisCluster,
    cache_kits: tuple[bk.BudgetKit, bk.BudgetKit],
) -> None:
    """Random operations on organizations of every primary: every answer of the cached kit
    equals the uncached kit's, at once after its own writes, within the invalidation window
    after another client's; one tracking connection per primary."""
    cached, plain = cache_kits
    orgs = orgs_on_every_primary(local_cluster, cluster_client, cached)
    scopes = [await scope_with_budgets(plain, org) for org in orgs]
    for scope in scopes:
        await answered_from_memory(cached, scope)
    assert len(tracking_channels(cached)) == len(local_cluster.primaries())
    rng = random.Random(17)
    for _ in range(150):
        scope = rng.choice(scopes)
        kind = rng.randrange(5)
        if kind == 0:
            await cached.debit(scope, {"usd": rng.choice([0.01, 0.4, 3])})
        elif kind == 1:
            held = await cached.reserve(scope, {"usd": 0.5}, ttl_seconds=60)
            if held.granted and rng.random() < 0.5:
                await cached.commit(held, {"usd": 0.2})
            elif held.granted:
                await cached.release(held)
        elif kind == 2:
            await cached.resume(scope, levels=("session",))
        elif kind == 3:
            await plain.debit(scope, {"usd": 0.3})  # another client
            await agree_soon(cached, plain, scope)
        for each in scopes:  # right after an acknowledged write of its own: the store's answer
            await agree(cached, plain, each)
    stats = cached.check_cache_stats()
    assert stats is not None and stats.hits > 300 and stats.canary_stale == 0, stats


async def test_check_cache_on_the_cluster_sees_other_clients_writes_on_every_primary(
    local_cluster: Any,
    cluster_client: RedisCluster,
    cache_kits: tuple[bk.BudgetKit, bk.BudgetKit],
) -> None:
    cached, plain = cache_kits
    orgs = orgs_on_every_primary(local_cluster, cluster_client, cached)
    scopes = [await scope_with_budgets(plain, org) for org in orgs]
    waits = []
    for _ in range(10):
        for scope in scopes:
            await answered_from_memory(cached, scope)
            await plain.debit(scope, {"usd": 0.01})
            waits.append(await agree_soon(cached, plain, scope))
    stats = cached.check_cache_stats()
    assert stats is not None and stats.invalidations > 0, stats
    print(f"\nother client's write to cached answer: max {1000 * max(waits):.1f} ms")


async def test_check_cache_on_the_cluster_recovers_when_a_tracking_connection_is_killed(
    local_cluster: Any,
    cluster_client: RedisCluster,
    cache_kits: tuple[bk.BudgetKit, bk.BudgetKit],
) -> None:
    """CLIENT KILL of each primary's tracking connection: nothing stale meanwhile, then the
    cache serves again from that node."""
    from redis.asyncio import Redis

    cached, plain = cache_kits
    orgs = orgs_on_every_primary(local_cluster, cluster_client, cached)
    scopes = [await scope_with_budgets(plain, org) for org in orgs]
    ports = owners_of(local_cluster, cluster_client, cached, orgs)
    for scope, port in zip(scopes, ports, strict=True):
        await answered_from_memory(cached, scope)
        channel = tracking_channels(cached)[f"127.0.0.1:{port}"]
        tracking_id = await channel.tracker._command("CLIENT", "ID")
        node = Redis(host="127.0.0.1", port=port)
        try:
            await node.execute_command("CLIENT", "KILL", "ID", tracking_id)
        finally:
            await node.aclose()
        await plain.debit(scope, {"usd": 0.01})  # written while that node's tracking is down
        await agree(cached, plain, scope)
        await answered_from_memory(cached, scope)
        await agree(cached, plain, scope)
    stats = cached.check_cache_stats()
    assert stats is not None and stats.resets >= len(scopes), stats


async def test_check_cache_follows_a_slot_migration(cluster_factory: Callable[..., Any]) -> None:
    """The org's slot moves to another primary (keys MIGRATEd, then SETSLOT NODE) and another
    client writes there: neither a cached scope with budgets nor one without any (whose keys do
    not exist, so no push names them) is answered stale; the cache then serves the org from its
    new primary, and its own writes there are read back at once."""
    cluster = cluster_factory(replicas=0)
    org = "org_moving"
    async with kit_pair(cluster.url) as (cached, plain):
        budgeted = await scope_with_budgets(plain, org)
        unbudgeted = bk.Scope(organization_id=org, session_id="s_new")  # no budget yet
        await cached.enable_check_cache(heartbeat_ms=20, canary_every=0)  # (not the canary)
        for scope in (budgeted, unbudgeted):
            await answered_from_memory(cached, scope)
        slot = cached.redis.keyslot(cached.keys.org_index(org))
        source = cluster.slot_owner(slot)
        target = next(n for n in cluster.primaries() if n.port != source.port)
        moved = await asyncio.to_thread(cluster.migrate_slot, slot, target.port)
        assert moved > 0 and cluster.slot_owner(slot).port == target.port
        await plain.debit(budgeted, {"usd": 1})  # another client, on the new owner
        await plain.create_budget(org, "session", "s_new", "usd", 1)
        await plain.debit(unbudgeted, {"usd": 1})  # exhausted: the check says stop
        assert (await plain.check(unbudgeted)).action == "stop"
        for scope in (budgeted, unbudgeted):
            await agree_soon(cached, plain, scope)
        for scope in (budgeted, unbudgeted):
            await answered_from_memory(cached, scope)  # from the new owner's channel
            await agree(cached, plain, scope)
        assert f"127.0.0.1:{target.port}" in tracking_channels(cached)
        for _ in range(10):
            await cached.debit(budgeted, {"usd": 0.5})
            await agree(cached, plain, budgeted)
        stats = cached.check_cache_stats()
        assert stats is not None and stats.resets >= 1, stats


@pytest.mark.slow
async def test_check_cache_follows_a_primary_failover(cluster_factory: Callable[..., Any]) -> None:
    """CLUSTER FAILOVER of the org's primary: its tracking connection is left on a replica; the
    cache resets, then serves the org from the promoted primary, every answer the store's."""
    cluster = cluster_factory()
    org = "org_failing_over"
    async with kit_pair(cluster.url) as (cached, plain):
        scope = await scope_with_budgets(plain, org)
        await cached.enable_check_cache(heartbeat_ms=20)
        await answered_from_memory(cached, scope)
        primary = cluster.slot_owner(cached.redis.keyslot(cached.keys.org_index(org)))
        replica = cluster.replica_of(primary.port)
        await asyncio.to_thread(cluster.failover, replica.port)
        for _ in range(5):
            await plain.debit(scope, {"usd": 0.1})  # another client, on the new primary
            await agree_soon(cached, plain, scope)
        await answered_from_memory(cached, scope)
        assert f"127.0.0.1:{replica.port}" in tracking_channels(cached)
        for _ in range(5):
            await cached.debit(scope, {"usd": 0.1})
            await agree(cached, plain, scope)
        stats = cached.check_cache_stats()
        assert stats is not None and stats.resets >= 1 and stats.canary_stale == 0, stats
