"""Test helpers shared by the behaviour tests: a manual clock and the invariant check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import budgetkit as bk


class ManualClock:
    """A test clock: starts at ``start`` and moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)

    def set(self, when: datetime) -> None:
        self.now = when


async def all_entries(kit: bk.BudgetKit, org: str, budget_id: str) -> list[bk.LedgerEntry]:
    """Every ledger entry of a budget, newest first (pages through the whole ledger)."""
    out: list[bk.LedgerEntry] = []
    while True:
        page = await kit.ledger(org, budget_id, limit=1000, offset=len(out))
        out += page
        if len(page) < 1000:
            return out


def micros(value: float) -> int:
    return round(value * 1_000_000)


async def assert_invariant(
    kit: bk.BudgetKit, org: str, budget_id: str, initial_limit: float
) -> None:
    """balance == initial limit - Σ ledger amounts, exactly (in micros)."""
    budget = await kit.get_budget(org, budget_id)
    entries = await all_entries(kit, org, budget_id)
    total = sum(micros(e.amount) for e in entries)
    assert micros(budget.balance) == micros(initial_limit) - total, (budget, len(entries))


class AsyncOverSync:
    """Drives the blocking facade from async tests: each call runs in a worker thread, so the
    behaviour tests written for the async client run unchanged against ``budgetkit.sync``."""

    def __init__(self, sync_kit: Any) -> None:
        self.sync = sync_kit

    def __getattr__(self, name: str) -> Any:
        from budgetkit.sync import _METHODS

        if name in _METHODS:
            method = getattr(self.sync, name)

            async def call(*args: Any, **kwargs: Any) -> Any:
                return await asyncio.to_thread(method, *args, **kwargs)

            return call
        if name == "add_check_rule":
            return self.sync.add_check_rule
        return getattr(self.sync.async_kit, name)  # keys, runtime, counters, batcher

    async def events(
        self, organization_id: str, after: str | None = None, *, follow: bool = False
    ) -> AsyncIterator[bk.BudgetEvent]:
        assert not follow, "the adapter reads what is there"
        events = await asyncio.to_thread(lambda: list(self.sync.events(organization_id, after)))
        for event in events:
            yield event


def build_kit(kind: str, redis: Any, **kwargs: Any) -> Any:
    """A kit of ``kind`` ("async", or "sync": the blocking facade driven through threads) on
    the server behind ``redis`` (a real or fake client); ``kwargs`` go to the constructor.
    Returns the kit and a closer to await at teardown."""
    import fakeredis

    import budgetkit.sync as bk_sync

    if kind == "async":
        return bk.BudgetKit(redis, **kwargs)
    pool_kwargs = redis.connection_pool.connection_kwargs
    if "server" in pool_kwargs:  # fakeredis: a second client of the same fake server
        server = pool_kwargs["server"]
        sync_kit = bk_sync.BudgetKit(lambda: fakeredis.FakeAsyncRedis(server=server), **kwargs)
    else:
        url = f"redis://{pool_kwargs.get('host', '127.0.0.1')}:{pool_kwargs['port']}/0"
        sync_kit = bk_sync.BudgetKit.from_url(url, **kwargs)
    return AsyncOverSync(sync_kit)


async def close_kit(kit: Any) -> None:
    """Closes what build_kit made for the sync kind (the async kit's client belongs to the
    fixture that made it)."""
    if isinstance(kit, AsyncOverSync):
        await asyncio.to_thread(kit.sync.close)
