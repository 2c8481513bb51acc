"""Optional baselines, run only when their dependencies are present.

- ``limits_moving_window``: the ``limits`` package's moving-window rate limiter on the same
  Redis (a Lua-backed limiter of one counter: the closest off-the-shelf building block).
- ``postgres_for_update``: a row-locking debit in PostgreSQL; not implemented by this harness,
  so it always reports why it was skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from typing import Any

from budgetkit.bench.context import BenchContext
from budgetkit.bench.measure import BenchError, Row

LIMITS_RATE = "1000000000/hour"


def postgres_skip_reason() -> str:
    """Always a reason: the driver or server that is missing, else that it is not implemented."""
    drivers = [m for m in ("asyncpg", "psycopg") if importlib.util.find_spec(m) is not None]
    if not drivers:
        return "neither asyncpg nor psycopg is importable"
    if shutil.which("postgres") is None and shutil.which("pg_ctl") is None:
        return "no postgres/pg_ctl binary on PATH"
    return "not implemented in this harness (optional extra)"


def limits_skip_reason() -> str | None:
    if importlib.util.find_spec("limits") is None:
        return "the limits package is not importable"
    return None


async def limits_moving_window(ctx: BenchContext, concurrency: int) -> Row:
    """``MovingWindowRateLimiter.hit`` of one shared key, per task, on the same Redis."""
    try:
        limits: Any = importlib.import_module("limits")
        storage_mod: Any = importlib.import_module("limits.storage")
        strategies: Any = importlib.import_module("limits.aio.strategies")
        storage = storage_mod.storage_from_string(
            f"async+{ctx.url}",
            implementation="redispy",
            key_prefix=ctx.key("limits"),
            max_connections=concurrency + 4,
        )
    except Exception as error:
        raise BenchError(f"cannot set up limits: {type(error).__name__}: {error}") from error
    limiter = strategies.MovingWindowRateLimiter(storage)
    item = limits.parse(LIMITS_RATE)

    async def op() -> bool:
        if not await limiter.hit(item, "bench"):
            raise BenchError("limits denied a hit below its limit")
        return True

    try:
        measurement = await ctx.measure([op] * concurrency)
    finally:
        await _close_limits_storage(storage)
    return measurement.row(
        "limits_moving_window", concurrency, 1, mode="hot", notes="limits MovingWindow hit()"
    )


async def _close_limits_storage(storage: Any) -> None:
    """Closes the redis-py client inside a limits storage (limits has no public close)."""
    client = getattr(getattr(storage, "bridge", None), "storage", None)
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()
