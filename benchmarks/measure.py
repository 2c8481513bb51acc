"""Timed runs: N asyncio tasks repeat one operation through a warm-up, then a measured window.

The warm-up lasts its time and at least until every task has finished one operation.
With ``yield_between`` each task gives the event loop a turn after every operation, outside the
timed call: an operation that completes without waiting for anything (a check answered from
memory, benchmarks.checkcache) would otherwise never let the loop run the other tasks, the
measured window's timer or a connection's reader.

Each task records the latency of every operation that completes while the window is open, so
``ops_per_s`` is completions per second of wall time and the percentiles are per operation as
the caller sees them (including waiting for the event loop and a pooled connection). Client CPU
is this process's CPU time over the window; server CPU is the delta of Redis's ``INFO cpu``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis

#: One operation of one task; returns False when the call was not an operation to count
#: (e.g. a baseline that only found its limit reached).
Op = Callable[[], Awaitable[bool]]

ERRORS_MAX = 100
DRAIN_GRACE_S = 0.5
DRAIN_TIMEOUT_S = 10.0
WARM_WAIT_MAX_S = 1.0
WARM_POLL_S = 0.005
NS_PER_US = 1000.0
USEC_PER_CALL_DIGITS = 3


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
    #: Redis's own time per call of the command (``INFO commandstats``: usec / calls) and the
    #: calls it counted; the ``server_cost`` rows only.
    usec_per_call: float | None = None
    calls: int | None = None
    #: Further figures of a row by name (e.g. bytes per ledger entry); medians over rounds.
    metrics: dict[str, float | None] | None = None
    #: How many rounds the row is the median of (benchmarks.runner).
    rounds: int = 1

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["client_cpu_pct"] = _pct(self.client_cpu_s, self.duration_s)
        out["server_cpu_pct"] = _pct(self.server_cpu_s, self.duration_s)
        return out


def merge_rounds(rows: Sequence[Row]) -> Row:
    """One row from the rows of the same job in several rounds.

    ops/s, each latency percentile, ``usec_per_call`` and each metric are the median over the
    rounds; counts, durations and CPU times add up (so CPU % is over all rounds); memory and
    overspend are the largest seen.
    """
    first = rows[0]
    if len(rows) == 1:
        return first
    rates = [r.ops_per_s for r in rows]
    spread = f"median of {len(rows)} rounds, ops/s {min(rates):,.0f}..{max(rates):,.0f}"
    usecs = [r.usec_per_call for r in rows if r.usec_per_call is not None]
    if usecs:
        spread += f", usec_per_call {min(usecs):g}..{max(usecs):g}"
    spread += "; notes of round 1" if first.notes else ""
    return Row(
        name=first.name,
        concurrency=first.concurrency,
        budgets_per_op=first.budgets_per_op,
        ops_per_s=round(statistics.median(rates), 1),
        p50_us=_median(r.p50_us for r in rows),
        p99_us=_median(r.p99_us for r in rows),
        p999_us=_median(r.p999_us for r in rows),
        ops=sum(r.ops for r in rows),
        errors=sum(r.errors for r in rows),
        duration_s=round(sum(r.duration_s for r in rows), 3),
        client_cpu_s=_total(r.client_cpu_s for r in rows),
        server_cpu_s=_total(r.server_cpu_s for r in rows),
        used_memory_bytes=max((r.used_memory_bytes or 0 for r in rows), default=0) or None,
        mode=first.mode,
        processes=first.processes,
        overspend=None if first.overspend is None else max(r.overspend or 0.0 for r in rows),
        notes=f"{first.notes}; {spread}".lstrip("; "),
        usec_per_call=_median((r.usec_per_call for r in rows), digits=USEC_PER_CALL_DIGITS),
        calls=None if first.calls is None else sum(r.calls or 0 for r in rows),
        metrics=_median_metrics(rows),
        rounds=len(rows),
    )


def _median(values: Iterable[float | None], digits: int = 1) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), digits) if present else None


def _median_metrics(rows: Sequence[Row]) -> dict[str, float | None] | None:
    names = [name for r in rows for name in (r.metrics or {})]
    if not names:
        return None
    return {
        name: _median(((r.metrics or {}).get(name) for r in rows), digits=USEC_PER_CALL_DIGITS)
        for name in dict.fromkeys(names)
    }


def _total(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present), 3) if present else None


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
    warm: int = 0  # tasks that finished their first operation


async def _worker(op: Op, window: _Window, yield_between: bool = False) -> None:
    first = True
    while not window.stopping:
        start = time.perf_counter_ns()
        try:
            counted = await op()
        except Exception as error:
            window.errors += 1
            window.first_error = window.first_error or f"{type(error).__name__}: {error}"
            if window.errors > ERRORS_MAX:
                raise BenchError(f"too many errors; first: {window.first_error}") from error
            counted = False
        if first:
            first = False
            window.warm += 1
        if counted and window.recording:
            window.latencies_ns.append(time.perf_counter_ns() - start)
        if yield_between:
            await asyncio.sleep(0)


async def _until_warm(tasks: Sequence[asyncio.Task[None]], window: _Window) -> None:
    """Waits (at most WARM_WAIT_MAX_S) until every task finished one operation, so connection
    setup and script loading stay out of the measured window even with a short warm-up."""
    deadline = time.monotonic() + WARM_WAIT_MAX_S
    while window.warm < len(tasks) and time.monotonic() < deadline:
        await _sleep_watching(tasks, WARM_POLL_S)


async def _sleep_watching(tasks: Sequence[asyncio.Task[None]], seconds: float) -> None:
    """Sleeps ``seconds``; raises at once if a task died."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        error = task.exception()
        raise error if error is not None else BenchError("a worker ended early")


async def _drain(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Lets in-flight operations finish for DRAIN_GRACE_S, then cancels what is left (an
    operation that retries under contention, like WATCH, could otherwise run on for long)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_GRACE_S)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: an error after the window is not reported


CpuReader = Callable[[], Awaitable[float]]


async def run_timed(
    ops: Sequence[Op],
    warmup_s: float,
    duration_s: float,
    admin: Redis | None,
    server_cpu: CpuReader | None = None,
    yield_between: bool = False,
) -> Measurement:
    """Runs one task per op: ``warmup_s`` unrecorded, then ``duration_s`` recorded (with
    ``yield_between``, each task yields to the event loop after every operation, untimed).

    Server CPU is Redis's (``INFO cpu`` through ``admin``) unless ``server_cpu`` reads another
    server's. Without ``admin`` (a worker process of the multi-process mode) Redis's CPU and
    memory are not read: the parent process reads them over the same window.
    """
    if server_cpu is None and admin is not None:
        redis_admin = admin

        async def server_cpu() -> float:
            return await server_cpu_s(redis_admin)

    window = _Window()
    tasks = [asyncio.create_task(_worker(op, window, yield_between)) for op in ops]
    try:
        await _sleep_watching(tasks, warmup_s)
        await _until_warm(tasks, window)
        server_before = None if server_cpu is None else await server_cpu()
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        window.recording = True
        await _sleep_watching(tasks, duration_s)
        window.recording = False
        wall_s = time.perf_counter() - wall_before
        client_cpu = time.process_time() - cpu_before
        server_used = None
        if server_cpu is not None and server_before is not None:
            server_used = await server_cpu() - server_before
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
        server_cpu_s=server_used,
        used_memory_bytes=None if admin is None else await used_memory_bytes(admin),
    )
