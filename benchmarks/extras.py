"""``limits_moving_window``: the ``limits`` package's async moving-window limiter on the same Redis.

``limits.aio.storage.RedisStorage`` (``async+redis://`` to the benchmark's server, redis-py
implementation, the benchmark prefix) with ``MovingWindowRateLimiter.hit(item, "bench",
cost=LIMITS_COST)`` on one shared key: the closest off-the-shelf building block (one Lua-backed
counter; no ledger, no hierarchy, no balances). Its moving window keeps one list entry per unit
of cost, so memory and time grow with the cost of a hit; the limit is set so it never denies.
``limits`` is optional (the ``bench`` extra): without it the row is skipped with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from benchmarks.context import BenchContext
from benchmarks.measure import BenchError, Row

LIMITS_RATE = "1000000000/hour"
LIMITS_COST = 10


def limits_skip_reason() -> str | None:
    if importlib.util.find_spec("limits") is None:
        return "the limits package is not importable (pip install 'budgetkit[bench]')"
    return None


def _storage(ctx: BenchContext, concurrency: int) -> Any:
    try:
        storage_mod: Any = importlib.import_module("limits.aio.storage")
        return storage_mod.RedisStorage(
            f"async+{ctx.url}",
            implementation="redispy",
            key_prefix=ctx.key("limits"),
            max_connections=concurrency + 4,
        )
    except Exception as error:
        raise BenchError(f"cannot set up limits: {type(error).__name__}: {error}") from error


async def limits_moving_window(ctx: BenchContext, concurrency: int) -> Row:
    """``MovingWindowRateLimiter.hit`` of one shared key with a cost, per task."""
    limits: Any = importlib.import_module("limits")
    strategies: Any = importlib.import_module("limits.aio.strategies")
    storage = _storage(ctx, concurrency)
    limiter = strategies.MovingWindowRateLimiter(storage)
    item = limits.parse(LIMITS_RATE)

    async def op() -> bool:
        if not await limiter.hit(item, "bench", cost=LIMITS_COST):
            raise BenchError("limits denied a hit below its limit")
        return True

    try:
        measurement = await ctx.measure([op] * concurrency)
    finally:
        await _close_limits_storage(storage)
    notes = f"limits {limits.__version__} MovingWindowRateLimiter.hit(cost={LIMITS_COST})"
    return measurement.row("limits_moving_window", concurrency, 1, mode="hot", notes=notes)


async def _close_limits_storage(storage: Any) -> None:
    """Closes the redis-py client inside a limits storage (limits has no public close)."""
    client = getattr(getattr(storage, "bridge", None), "storage", None)
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()
