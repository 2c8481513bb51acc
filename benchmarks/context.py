"""What every workload shares: the Redis URL, an admin connection, the key prefix, the timing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from benchmarks.measure import CpuReader, Measurement, Op, run_timed
from benchmarks.progress import Progress
from budgetkit._core.client import BudgetKit

SOCKET_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
POOL_HEADROOM = 4
UNLINK_BATCH_SIZE = 500


@dataclass(slots=True)
class Settings:
    """Timing and shape of a run (from the command line)."""

    warmup_s: float
    duration_s: float
    spread: bool
    batching: bool = True


@dataclass(slots=True)
class BenchContext:
    """One run's Redis (``url``), its admin connection and the prefix of every benchmark key.

    Every key a workload writes starts with ``prefix`` so ``cleanup`` can remove it, also from a
    Redis given with ``--redis-url`` that holds other data. ``postgres_url`` is the PostgreSQL
    of the ``postgres_for_update`` baseline (None when that baseline does not run) and
    ``postgres_cpu`` reads its CPU time (None when it is not a local cluster).
    """

    url: str
    admin: Redis
    prefix: str
    settings: Settings
    progress: Progress
    postgres_url: str | None = None
    postgres_cpu: CpuReader | None = None

    @property
    def mode(self) -> str:
        return "spread" if self.settings.spread else "hot"

    def client(self, concurrency: int) -> Redis:
        """A client whose pool has a connection for every task (redis-py raises beyond it)."""
        return Redis.from_url(
            self.url,
            max_connections=concurrency + POOL_HEADROOM,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )

    def kit(self, client: Redis, batching: bool | None = None) -> BudgetKit:
        """A BudgetKit under the benchmark prefix; ``batching`` None = the run's setting."""
        on = self.settings.batching if batching is None else batching
        return BudgetKit(client, prefix=self.prefix, batching=on)

    def key(self, *parts: str) -> str:
        """A key of a baseline, under the benchmark prefix."""
        return ":".join([self.prefix, *parts])

    async def measure(
        self, ops: Sequence[Op], server_cpu: CpuReader | None = None, yield_between: bool = False
    ) -> Measurement:
        """A timed run of ``ops``; server CPU is Redis's unless ``server_cpu`` reads another's
        (``yield_between``: benchmarks.measure.run_timed)."""
        settings = self.settings
        return await run_timed(
            ops,
            settings.warmup_s,
            settings.duration_s,
            self.admin,
            server_cpu=server_cpu,
            yield_between=yield_between,
        )

    async def cleanup(self) -> int:
        """Unlinks every key under the prefix; returns how many."""
        removed = 0
        batch: list[bytes | str] = []
        async for key in self.admin.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= UNLINK_BATCH_SIZE:
                removed += int(await self.admin.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(await self.admin.unlink(*batch))
        return removed
