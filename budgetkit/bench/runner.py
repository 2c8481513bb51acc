"""The order of a run: every workload at every concurrency and scope size, one after another.

Each workload starts from an empty benchmark keyspace (``cleanup`` after each), so ledger streams
of one run do not inflate the memory or the timings of the next.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from budgetkit.bench import baselines, ceiling, extras, workloads
from budgetkit.bench.context import BenchContext, Settings
from budgetkit.bench.measure import BenchError, Row
from budgetkit.bench.progress import Progress
from budgetkit.bench.report import compute_ratios, document, machine_info
from budgetkit.errors import BudgetkitError

Job = Callable[[], Awaitable[Row]]

WORKLOADS = (
    "raw_evalsha_noop",
    "check",
    "debit",
    "reserve_commit",
    "watch_multi_exec",
    "naive_check_then_incr",
    "server_ceiling_debit",
    "limits_moving_window",
    "postgres_for_update",
)
SCOPED = ("check", "debit", "reserve_commit")
PER_CONCURRENCY: dict[str, Callable[[BenchContext, int], Awaitable[Row]]] = {
    "raw_evalsha_noop": baselines.raw_evalsha_noop,
    "watch_multi_exec": baselines.watch_multi_exec,
    "naive_check_then_incr": baselines.naive_check_then_incr,
    "limits_moving_window": extras.limits_moving_window,
}


@dataclass(slots=True)
class Plan:
    """What to run (parsed from the command line)."""

    settings: Settings
    concurrency: list[int]
    scope_sizes: list[int]
    workloads: list[str]
    ceiling_requests: int


def skip_reason(name: str) -> str | None:
    """Why a workload cannot run here, or None."""
    if name in SCOPED:
        return workloads.unavailable_reason(name)
    if name == "limits_moving_window":
        return extras.limits_skip_reason()
    if name == "postgres_for_update":
        return extras.postgres_skip_reason()
    return None


def jobs(ctx: BenchContext, plan: Plan, skipped: list[dict[str, str]]) -> list[tuple[str, Job]]:
    """(label, job) of every run of the plan; skipped workloads are reported and left out."""
    out: list[tuple[str, Job]] = []
    for name in plan.workloads:
        reason = skip_reason(name)
        if reason is not None:
            ctx.progress.skip(name, reason)
            skipped.append({"name": name, "reason": reason})
            continue
        if name in SCOPED:
            for size in plan.scope_sizes:
                for c in plan.concurrency:
                    out.append((f"{name} b={size} c={c}", _scoped_job(ctx, name, size, c)))
        elif name == "server_ceiling_debit":
            out.append((name, _ceiling_job(ctx, plan.ceiling_requests)))
        else:
            for c in plan.concurrency:
                out.append((f"{name} c={c}", _concurrency_job(ctx, name, c)))
    return out


def _scoped_job(ctx: BenchContext, name: str, size: int, concurrency: int) -> Job:
    return lambda: workloads.run_budgetkit(ctx, name, size, concurrency)


def _ceiling_job(ctx: BenchContext, requests: int) -> Job:
    return lambda: ceiling.server_ceiling_debit(ctx, requests)


def _concurrency_job(ctx: BenchContext, name: str, concurrency: int) -> Job:
    return lambda: PER_CONCURRENCY[name](ctx, concurrency)


@dataclass(slots=True)
class Outcome:
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


async def run_jobs(ctx: BenchContext, plan: Plan) -> Outcome:
    outcome = Outcome()
    planned = jobs(ctx, plan, outcome.skipped)
    for index, (label, job) in enumerate(planned, start=1):
        ctx.progress.step(f"[{index}/{len(planned)}] {label}")
        try:
            row = await job()
        except (BenchError, BudgetkitError, RedisError, OSError) as error:
            message = f"{type(error).__name__}: {error}"
            ctx.progress.fail(label, message)
            outcome.failed.append({"name": label, "error": message})
        else:
            outcome.rows.append(row)
            ctx.progress.row(row)
        finally:
            await ctx.cleanup()
    return outcome


async def run(url: str, plan: Plan, progress: Progress, command: str) -> dict[str, Any]:
    """Runs the plan against ``url``; returns the report document."""
    admin = Redis.from_url(url, decode_responses=True)
    try:
        server: dict[str, Any] = await admin.info("server")
        prefix = f"bkbench{secrets.token_hex(4)}"
        ctx = BenchContext(url, admin, prefix, plan.settings, progress)
        started = time.perf_counter()
        try:
            outcome = await run_jobs(ctx, plan)
        finally:
            await ctx.cleanup()
        elapsed_s = time.perf_counter() - started
    finally:
        await admin.aclose()
    machine = machine_info(server) | {"workloads_s": round(elapsed_s, 1)}
    doc = document(outcome.rows, compute_ratios(outcome.rows), machine, command)
    return doc | {"skipped": outcome.skipped, "failed": outcome.failed}
