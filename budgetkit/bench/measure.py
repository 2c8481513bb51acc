"""Timed runs: N asyncio tasks repeat one operation through a warm-up, then a measured window.

Each task records the latency of every operation that completes while the window is open, so
``ops_per_s`` is completions per second of wall time and the percentiles are per operation as
the caller sees them (including waiting for the event loop and a pooled connection). Client CPU
is this process's CPU time over the window; server CPU is the delta of Redis's ``INFO cpu``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis

#: One operation of one task; returns False when the call was not an operation to count
#: (e.g. a baseline that only found its limit reached).
Op = Callable[[], Awaitable[bool]]

ERRORS_MAX = 100
DRAIN_TIMEOUT_S = 10.0
NS_PER_US = 1000.0


class BenchError(RuntimeError):
    """A workload failed (too many errors, a wrong answer, a missing tool)."""


@dataclass(slots=True)
class Row:
    """One result line of the report (the JSON fields of DESIGN.md § Benchmarks and more)."""

    name: str
    concurrency: int
    budgets_per_op: int
    ops_per_s: float
    p50_us: float | None
    p99_us: float | None
    p999_us: float | None
    ops: int = 0
    errors: int = 0
    duration_s: float = 0.0
    client_cpu_s: float | None = None
    server_cpu_s: float | None = None
    used_memory_bytes: int | None = None
    mode: str = "hot"
    processes: int = 1
    overspend: float | None = None
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["client_cpu_pct"] = _pct(self.client_cpu_s, self.duration_s)
        out["server_cpu_pct"] = _pct(self.server_cpu_s, self.duration_s)
        return out


def _pct(cpu_s: float | None, wall_s: float) -> float | None:
    """CPU time as a percentage of one core over the wall time."""
    if cpu_s is None or wall_s <= 0:
        return None
    return round(100.0 * cpu_s / wall_s, 1)


@dataclass(slots=True)
class Measurement:
    """What one timed run observed; ``latencies_ns`` sorted ascending."""

    latencies_ns: list[int]
    errors: int
    first_error: str
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    used_memory_bytes: int | None

    @property
    def ops(self) -> int:
        return len(self.latencies_ns)

    def percentile_us(self, fraction: float) -> float | None:
        """Nearest-rank percentile in microseconds; None without samples."""
        if not self.latencies_ns:
            return None
        rank = min(len(self.latencies_ns) - 1, max(0, int(fraction * len(self.latencies_ns))))
        return round(self.latencies_ns[rank] / NS_PER_US, 1)

    def row(self, name: str, concurrency: int, budgets_per_op: int, **extra: Any) -> Row:
        notes = str(extra.pop("notes", ""))
        if self.errors:
            notes = f"{notes}; {self.errors} errors (first: {self.first_error})".lstrip("; ")
        return Row(
            name=name,
            concurrency=concurrency,
            budgets_per_op=budgets_per_op,
            ops_per_s=round(self.ops / self.wall_s, 1) if self.wall_s > 0 else 0.0,
            p50_us=self.percentile_us(0.50),
            p99_us=self.percentile_us(0.99),
            p999_us=self.percentile_us(0.999),
            ops=self.ops,
            errors=self.errors,
            duration_s=round(self.wall_s, 3),
            client_cpu_s=round(self.client_cpu_s, 3),
            server_cpu_s=None if self.server_cpu_s is None else round(self.server_cpu_s, 3),
            used_memory_bytes=self.used_memory_bytes,
            notes=notes,
            **extra,
        )


async def server_cpu_s(admin: Redis) -> float:
    """Redis's own CPU time so far (``used_cpu_sys + used_cpu_user``), in seconds."""
    info: dict[str, Any] = await admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def used_memory_bytes(admin: Redis) -> int:
    info: dict[str, Any] = await admin.info("memory")
    return int(info["used_memory"])


@dataclass(slots=True)
class _Window:
    recording: bool = False
    stopping: bool = False
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


async def _worker(op: Op, window: _Window) -> None:
    while not window.stopping:
        start = time.perf_counter_ns()
        try:
            counted = await op()
        except Exception as error:
            window.errors += 1
            window.first_error = window.first_error or f"{type(error).__name__}: {error}"
            if window.errors > ERRORS_MAX:
                raise BenchError(f"too many errors; first: {window.first_error}") from error
            continue
        if counted and window.recording:
            window.latencies_ns.append(time.perf_counter_ns() - start)


async def _sleep_watching(tasks: Sequence[asyncio.Task[None]], seconds: float) -> None:
    """Sleeps ``seconds``; raises at once if a task died."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        error = task.exception()
        raise error if error is not None else BenchError("a worker ended early")


async def _drain(tasks: Sequence[asyncio.Task[None]]) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_timed(
    ops: Sequence[Op], warmup_s: float, duration_s: float, admin: Redis | None
) -> Measurement:
    """Runs one task per op: ``warmup_s`` unrecorded, then ``duration_s`` recorded.

    Without ``admin`` (a worker process of the multi-process mode) the server's CPU and memory
    are not read: the parent process reads them over the same window.
    """
    window = _Window()
    tasks = [asyncio.create_task(_worker(op, window)) for op in ops]
    try:
        await _sleep_watching(tasks, warmup_s)
        server_before = None if admin is None else await server_cpu_s(admin)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        window.recording = True
        await _sleep_watching(tasks, duration_s)
        window.recording = False
        wall_s = time.perf_counter() - wall_before
        client_cpu = time.process_time() - cpu_before
        server_cpu = None
        if admin is not None and server_before is not None:
            server_cpu = await server_cpu_s(admin) - server_before
    finally:
        window.recording = False
        window.stopping = True
        await _drain(tasks)
    if not window.latencies_ns and window.errors:
        raise BenchError(f"no operation succeeded; first error: {window.first_error}")
    return Measurement(
        latencies_ns=sorted(window.latencies_ns),
        errors=window.errors,
        first_error=window.first_error,
        wall_s=wall_s,
        client_cpu_s=client_cpu,
        server_cpu_s=server_cpu,
        used_memory_bytes=None if admin is None else await used_memory_bytes(admin),
    )
