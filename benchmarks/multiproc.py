"""Multi-process mode: N worker processes share the same budgets; their ops/s add up.

The parent creates the budgets (one hot scope, or one organization per task in spread mode) and
starts N processes (multiprocessing, ``spawn``: nothing of the parent's event loop is
inherited). Each worker opens its own client (one connection per task plus headroom) and
BudgetKit, runs ``concurrency / N`` tasks, and meets the others at a barrier; from there every
process runs the warm-up and then the measured window on its own clock (they start within
milliseconds of each other). The parent reads Redis's CPU and memory over the same window. The
row's ops/s is the sum over workers; its latency percentiles are over every worker's
operations; client CPU is the sum of the workers' CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from benchmarks.context import CONNECT_TIMEOUT_S, POOL_HEADROOM, SOCKET_TIMEOUT_S, BenchContext
from benchmarks.measure import BenchError, Measurement, Row, run_timed, server_cpu_s
from benchmarks.workloads import OPS, batching_note, batching_of, make_scopes, scope_of
from budgetkit._core.client import BudgetKit

STARTUP_TIMEOUT_S = 60.0
RESULT_SLACK_S = 30.0
JOIN_TIMEOUT_S = 10.0
PROCESSES_MAX = 64


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one worker runs: ``orgs`` has one organization per task."""

    url: str
    prefix: str
    name: str
    size: int
    orgs: tuple[str, ...]
    batching: bool
    warmup_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class WorkerResult:
    latencies_ns: list[int]
    errors: int
    first_error: str
    wall_s: float
    cpu_s: float
    notes: str


def worker_main(spec: WorkerSpec, barrier: Any, results: Any) -> None:
    """Entry point of a worker process: puts ("ok", WorkerResult) or ("error", text)."""
    try:
        results.put(("ok", asyncio.run(_worker(spec, barrier))))
    except BaseException as error:  # reported to the parent, which decides
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put(("error", f"{type(error).__name__}: {error}"))


async def _worker(spec: WorkerSpec, barrier: Any) -> WorkerResult:
    client = Redis.from_url(
        spec.url,
        max_connections=len(spec.orgs) + POOL_HEADROOM,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )
    try:
        kit = BudgetKit(client, prefix=spec.prefix, batching=spec.batching)
        scopes = [scope_of(org, spec.size) for org in spec.orgs]
        ops = [OPS[spec.name](kit, scope) for scope in scopes]
        await asyncio.gather(*(op() for op in ops))  # connections and scripts, before the barrier
        await asyncio.to_thread(barrier.wait, STARTUP_TIMEOUT_S)
        m = await run_timed(ops, spec.warmup_s, spec.duration_s, None)
        notes = batching_note(kit)
    finally:
        await client.aclose()
    return WorkerResult(m.latencies_ns, m.errors, m.first_error, m.wall_s, m.client_cpu_s, notes)


def split(items: Sequence[str], parts: int) -> list[tuple[str, ...]]:
    """``items`` dealt round-robin into ``parts`` non-empty groups."""
    return [tuple(items[i::parts]) for i in range(parts)]


async def _collect(results: Any, count: int, timeout_s: float) -> list[WorkerResult]:
    out: list[WorkerResult] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout_s
    for _ in range(count):
        remaining = max(0.1, deadline - time.monotonic())
        try:
            status, value = await asyncio.to_thread(results.get, True, remaining)
        except queue.Empty as error:
            raise BenchError(f"{count - len(out) - len(errors)} workers did not report") from error
        if status == "ok":
            out.append(value)
        else:
            errors.append(str(value))
    if errors:
        raise BenchError(f"{len(errors)} of {count} workers failed; first: {errors[0]}")
    return out


def merge(results: Sequence[WorkerResult], server_cpu: float, memory: int) -> Measurement:
    """One measurement of every worker's operations over the shared window."""
    latencies = sorted(ns for r in results for ns in r.latencies_ns)
    first_error = next((r.first_error for r in results if r.first_error), "")
    return Measurement(
        latencies_ns=latencies,
        errors=sum(r.errors for r in results),
        first_error=first_error,
        wall_s=sum(r.wall_s for r in results) / len(results),
        client_cpu_s=sum(r.cpu_s for r in results),
        server_cpu_s=server_cpu,
        used_memory_bytes=memory,
    )


async def run_multiprocess(
    ctx: BenchContext, name: str, size: int, concurrency: int, processes: int
) -> Row:
    """``name`` at ``concurrency`` tasks in total, dealt over ``processes`` worker processes."""
    if not 2 <= processes <= min(PROCESSES_MAX, concurrency):
        raise BenchError(f"processes must be in 2..min({PROCESSES_MAX}, concurrency)")
    client = ctx.client(1)
    try:
        scopes = await make_scopes(ctx.kit(client), size, concurrency, ctx.settings.spread)
    finally:
        await client.aclose()
    settings = ctx.settings
    specs = [
        WorkerSpec(
            ctx.url,
            ctx.prefix,
            name,
            size,
            orgs,
            batching_of(ctx, name),
            settings.warmup_s,
            settings.duration_s,
        )
        for orgs in split([scope.organization_id for scope in scopes], processes)
    ]
    mp = multiprocessing.get_context("spawn")
    barrier = mp.Barrier(processes + 1)
    results = mp.Queue()
    procs = [mp.Process(target=worker_main, args=(s, barrier, results)) for s in specs]
    try:
        for proc in procs:
            proc.start()
        measurement, worker_notes = await _measure(ctx, barrier, results, processes)
    finally:
        with contextlib.suppress(Exception):
            barrier.abort()
        for proc in procs:
            proc.join(JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(JOIN_TIMEOUT_S)
        results.close()
    per = concurrency // processes
    notes = f"{processes} processes x {per}{'+' if concurrency % processes else ''} tasks; "
    notes += worker_notes
    return measurement.row(name, concurrency, size, mode=ctx.mode, processes=processes, notes=notes)


async def _measure(
    ctx: BenchContext, barrier: Any, results: Any, processes: int
) -> tuple[Measurement, str]:
    settings = ctx.settings
    try:
        await asyncio.to_thread(barrier.wait, STARTUP_TIMEOUT_S)
    except threading.BrokenBarrierError:
        reported = await _collect(results, processes, JOIN_TIMEOUT_S)  # raises with the cause
        raise BenchError(f"workers did not start ({len(reported)} reported)") from None
    await asyncio.sleep(settings.warmup_s)
    cpu_before = await server_cpu_s(ctx.admin)
    await asyncio.sleep(settings.duration_s)
    server_cpu = await server_cpu_s(ctx.admin) - cpu_before
    timeout_s = settings.warmup_s + settings.duration_s + RESULT_SLACK_S
    reported = await _collect(results, processes, timeout_s)
    info: dict[str, Any] = await ctx.admin.info("memory")
    measurement = merge(reported, server_cpu, int(info["used_memory"]))
    if not measurement.latencies_ns:
        raise BenchError(f"no operation succeeded; first error: {measurement.first_error}")
    return measurement, reported[0].notes
