"""Fixtures for the scale-out tests: a private Redis Cluster and Sentinel groups.

Imported by tests/test_cluster.py and tests/test_sentinel.py (``from cluster_fixtures import
...``); the servers come from scripts/redis_server.py (conftest's ``redis_server``): 127.0.0.1
only, free ports (never 6379), temporary directories, always stopped (fixture teardown, and at
interpreter exit).

Fixtures
--------
``local_cluster`` (session)
    3 primaries + 3 replicas, shared by the tests that leave the topology as they found it.
``cluster_client`` (function, async)
    ``redis.asyncio.cluster.RedisCluster`` on ``local_cluster`` with redis-py's retry off (as
    ``budgetkit._core.urls`` builds it), FLUSHALL on every primary before the test.
``cluster_factory`` (function)
    ``factory(**kwargs) -> LocalCluster``: a dedicated, started cluster for the tests that fail
    over or reshard; stopped at teardown.
``sentinel_factory`` (function)
    ``factory(**kwargs) -> SentinelGroup`` (1 primary + 1 replica + 3 sentinels by default).
``cluster_snapshot`` (function)
    ``await snapshot(client) -> dict[bytes, bytes]``: DUMP of every key of every primary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import put_snapshot_value, redis_server, require_server_binary, started_each
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from support import all_entries, assert_invariant

import budgetkit as bk

SNAPSHOT_MAX_KEYS = 100_000

LocalCluster = redis_server.LocalCluster
SentinelGroup = redis_server.SentinelGroup
#: The launcher under the name tests/test_cluster.py imports it by.
redis_cluster = redis_server


def cluster_client_for(ports: list[int], **kwargs: Any) -> RedisCluster:
    """A RedisCluster with redis-py's retry off, as budgetkit._core.urls builds one."""
    kwargs.setdefault("socket_timeout", 5.0)
    kwargs.setdefault("socket_connect_timeout", 2.0)
    return RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in ports],
        retry=Retry(NoBackoff(), 0),
        **kwargs,
    )


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[Any]:
    require_server_binary()
    with LocalCluster() as cluster:
        yield cluster


@pytest_asyncio.fixture
async def cluster_client(local_cluster: Any) -> AsyncIterator[RedisCluster]:
    client = cluster_client_for(local_cluster.ports)
    try:
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    require_server_binary()
    with started_each(LocalCluster, tmp_path, "cluster") as factory:
        yield factory


@pytest.fixture
def sentinel_factory(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    require_server_binary()
    with started_each(SentinelGroup, tmp_path, "sentinel") as factory:
        yield factory


async def snapshot_cluster(
    client: RedisCluster, *, mode: str = "auto", include_ttl: bool = False
) -> dict[bytes, bytes]:
    """Every key of every primary -> its DUMP (plus TTL presence with ``include_ttl``), the
    Cluster counterpart of conftest's ``redis_snapshot``."""
    assert mode in ("auto", "dump"), mode
    keys: set[bytes] = set()
    async for key in client.scan_iter(count=1000):
        keys.add(key)
        if len(keys) > SNAPSHOT_MAX_KEYS:
            raise AssertionError(f"snapshot: more than {SNAPSHOT_MAX_KEYS} keys")
    result: dict[bytes, bytes] = {}
    for key in sorted(keys):
        value = await client.dump(key)
        await put_snapshot_value(result, client, key, value, include_ttl=include_ttl)
    return result


@pytest.fixture
def cluster_snapshot() -> Callable[..., Any]:
    return snapshot_cluster


# -- a debit load that survives failovers ----------------------------------------------------


class DebitLoad:
    """``workers`` tasks debiting ``scope`` 1 usd at a time, each call under its own
    idempotency key and retried with that key until it is acknowledged (an error that says
    "not applied" or "outcome unknown" is retried; anything else fails the test).

    ``acked`` holds the keys Redis acknowledged; ``errors`` counts the retried errors by type.
    """

    def __init__(self, kit: Any, scope: Any, *, workers: int = 6, retry_s: float = 30.0) -> None:
        self.kit = kit
        self.scope = scope
        self.workers = workers
        self.retry_s = retry_s
        self.acked: list[str] = []
        self.errors: dict[str, int] = {}
        self._stop = False
        self._tasks: list[Any] = []

    def start(self) -> DebitLoad:
        self._tasks = [asyncio.ensure_future(self._worker(w)) for w in range(self.workers)]
        return self

    async def _worker(self, worker: int) -> None:
        i = 0
        while not self._stop:
            key = f"w{worker}-{i}"
            deadline = time.monotonic() + self.retry_s
            while True:
                try:
                    await self.kit.debit(self.scope, {"usd": 1}, idempotency_key=key)
                    self.acked.append(key)
                    break
                except bk.BudgetUnavailable as error:  # also OutcomeUnknown, ReplicationTimeout
                    name = type(error).__name__
                    self.errors[name] = self.errors.get(name, 0) + 1
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)
            i += 1

    async def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        """Until ``count`` debits are acknowledged in all (a worker's failure is raised)."""
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < count:
            for task in self._tasks:
                if task.done():
                    task.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.acked)} of {count} debits acknowledged")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)


async def scope_budgets(kit: Any, org: str, *, limit: int = 1_000_000) -> tuple[Any, list[Any]]:
    """Session, user and org budgets of one scope (usd), and that scope."""
    scope = bk.Scope(organization_id=org, session_id="sess_load", user_id="usr_load")
    budgets = [
        await kit.create_budget(org, "session", "sess_load", "usd", limit),
        await kit.create_budget(org, "user", "usr_load", "usd", limit),
        await kit.create_budget(org, "org", org, "usd", limit),
    ]
    return scope, budgets


async def assert_books_exact(
    kit: Any, org: str, budgets: list[Any], acked: list[str], *, limit: int = 1_000_000
) -> None:
    """Each budget was charged exactly once per acknowledged debit, and its balance is the limit
    minus its ledger, exactly: nothing lost, nothing duplicated."""
    assert len(set(acked)) == len(acked)
    for budget in budgets:
        entries = await all_entries(kit, org, budget.id)
        debits = [e for e in entries if e.meter_source == "manual"]
        assert len(debits) == len(entries), [e.meter_source for e in entries][:5]
        assert len(debits) == len(acked), (budget.subject_type, len(debits), len(acked))
        assert (await kit.get_budget(org, budget.id)).balance == limit - len(acked)
        await assert_invariant(kit, org, budget.id, limit)
