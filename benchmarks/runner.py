"""The order of a run: every workload at every concurrency and scope size, one after another.

With ``rounds`` > 1 the whole sequence runs that many times and each row is the median of its
rounds: on a machine shared with other work, a burst of load then lands on one round of many
rows rather than on all of one row, and the rows (and their ratios) see the same average load.
A quick run repeats only the rows the target table reads (benchmarks.report.target_shapes, the
uvloop rows, and server_cost) in its later rounds: the rest run once.
``server_cost`` is one job of several rows (benchmarks.server_cost: each script command's
Redis time per call, next to a lean reference script). Then the extra rows: the spread mode
(one organization per task) and the multi-process mode (N worker processes sharing the budgets)
of a few workloads, at the ratio scope size; and the ``+uvloop`` rows (benchmarks.loops): the
hot-path workloads again on a uvloop event loop, at every concurrency (a quick run: the points
the ratios read). The check cache rows (benchmarks.checkcache) run right after ``check``, at the
ratio scope size and the low and high concurrency, their writer being one second process for
the whole run. Each run starts from an empty benchmark keyspace (``cleanup`` after each), so
ledger streams of one run do not inflate the memory or the timings of the next.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from benchmarks import (
    baselines,
    ceiling,
    checkcache,
    extras,
    gate,
    loops,
    multiproc,
    postgres,
    server_cost,
    workloads,
)
from benchmarks.context import BenchContext, Settings
from benchmarks.measure import BenchError, CpuReader, Row, merge_rounds
from benchmarks.progress import Progress
from benchmarks.report import (
    RATIO_CONCURRENCY,
    RATIO_SCOPE_SIZE,
    RatioPoints,
    Shape,
    compute_ratios,
    document,
    hot_path_shapes,
    machine_info,
    ratio_points,
    target_shapes,
)
from budgetkit._core.errors import BudgetkitError

#: One job of a run: a row, or several (server_cost measures its commands together).
Job = Callable[[], Awaitable[Row | list[Row]]]

WORKLOADS = (
    "raw_evalsha_noop",
    "check",
    *checkcache.WORKLOADS,
    "debit",
    "debit_batched",
    "reserve_commit",
    "reserve_commit_gate",
    "watch_multi_exec",
    "naive_check_then_incr",
    "server_ceiling_debit",
    "server_cost",
    "limits_moving_window",
    "postgres_for_update",
)
SCOPED = ("check", "debit", "debit_batched", "reserve_commit")
#: Workloads run at the ratio scope size only in a quick run.
QUICK_ONE_SIZE = ("reserve_commit", "postgres_for_update")
#: Workloads with extra spread-mode and multi-process rows by default.
EXTRA_DEFAULT = ("debit", "debit_batched")
PER_CONCURRENCY: dict[str, Callable[[BenchContext, int], Awaitable[Row]]] = {
    "raw_evalsha_noop": baselines.raw_evalsha_noop,
    "reserve_commit_gate": gate.reserve_commit_gate,
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
    spread_workloads: list[str] = field(default_factory=list)
    processes: int = 1
    mp_workloads: list[str] = field(default_factory=list)
    quick: bool = False
    rounds: int = 1
    #: Requests per command of the server_cost workload.
    server_cost_requests: int = 5_000
    #: Workloads (of benchmarks.loops.WORKLOADS) that also run on uvloop.
    uvloop_workloads: list[str] = field(default_factory=list)

    @property
    def points(self) -> RatioPoints:
        """The shapes the ratios read, among those of this plan."""
        return ratio_points(self.scope_sizes, self.concurrency)

    def every_round(self, shape: Shape) -> bool:
        """Whether a job runs in every round: all of them, but in a quick run only the rows of
        the target table (the others run in the first round only)."""
        return not self.quick or shape in target_shapes(self.points)

    def uvloop_shapes(self) -> list[Shape]:
        """The +uvloop rows: each uvloop workload at the ratio scope size and every
        concurrency; in a quick run only at the points the hot-path ratios read."""
        if self.quick:
            shapes = hot_path_shapes(self.points)
        else:
            size = self.points.size
            shapes = [
                (name, None if name not in SCOPED else size, c)
                for name in loops.WORKLOADS
                for c in self.concurrency
            ]
        return [shape for shape in shapes if shape[0] in self.uvloop_workloads]

    @property
    def extra_scope_size(self) -> int:
        """The scope size of the extra rows: the ratio size when run, else the largest."""
        sizes = self.scope_sizes
        return RATIO_SCOPE_SIZE if RATIO_SCOPE_SIZE in sizes else max(sizes)

    def sizes_of(self, name: str) -> list[int]:
        """Scope sizes of a workload: all of them, but only the ratio size for the secondary
        ones in a quick run (it has to finish in under a minute)."""
        if self.quick and name in QUICK_ONE_SIZE:
            return [self.extra_scope_size]
        return self.scope_sizes

    @property
    def extra_concurrency(self) -> list[int]:
        """Concurrency of the extra rows: the sweep, or only the ratio one in a quick run."""
        if not self.quick:
            return self.concurrency
        sweep = self.concurrency
        return [RATIO_CONCURRENCY if RATIO_CONCURRENCY in sweep else max(sweep)]


@dataclass(slots=True)
class Postgres:
    """The PostgreSQL of this run, or why postgres_for_update is skipped."""

    url: str | None = None
    cpu: CpuReader | None = None
    skip: str | None = "not requested"


def skip_reason(name: str, pg: Postgres) -> str | None:
    """Why a workload cannot run here, or None."""
    if name in SCOPED:
        return workloads.unavailable_reason(name)
    if name in checkcache.WORKLOADS:
        return checkcache.unavailable_reason()
    if name == "reserve_commit_gate":
        return workloads.unavailable_reason("reserve_commit")
    if name == "limits_moving_window":
        return extras.limits_skip_reason()
    if name == "postgres_for_update":
        return pg.skip
    if name == "server_ceiling_debit":
        return ceiling.skip_reason()
    return None


@dataclass(frozen=True, slots=True)
class Planned:
    """One job of the plan: its label, the job, and whether it runs in every round."""

    label: str
    job: Job
    every_round: bool = True


def jobs(
    ctx: BenchContext,
    plan: Plan,
    pg: Postgres,
    skipped: list[dict[str, str]],
    uvloop: loops.UvloopThread | None = None,
    writer: checkcache.WriterProcess | None = None,
) -> list[Planned]:
    """Every job of the plan; skipped workloads are reported and left out. A ``+uvloop`` row
    comes right after the row it is a variant of (the same load for both). ``writer``: the
    second process of the check cache rows (without one they are skipped)."""
    out: list[Planned] = []
    runnable = []
    for name in plan.workloads:
        reason = skip_reason(name, pg)
        if reason is None and name in checkcache.WORKLOADS and writer is None:
            reason = "no writer process in this run"
        if reason is not None:
            _skip(ctx, skipped, name, reason)
        else:
            runnable.append(name)
    twins = _uvloop_shapes(ctx, plan, runnable, skipped, uvloop)

    def add(label: str, job: Job, shape: Shape) -> None:
        out.append(Planned(label, job, plan.every_round(shape)))
        if uvloop is not None and shape in twins:
            name, size, c = shape
            twin = f"{loops.variant_name(name)} {label.removeprefix(name).strip()}"
            out.append(Planned(twin, _uvloop_job(uvloop, name, size, c), True))

    for name in runnable:
        if name in SCOPED or name == "postgres_for_update":
            for size in plan.sizes_of(name):
                for c in plan.concurrency:
                    add(f"{name} b={size} c={c}", _scoped_job(ctx, name, size, c), (name, size, c))
        elif name == "server_ceiling_debit":
            out.append(Planned(name, _ceiling_job(ctx, plan.ceiling_requests), not plan.quick))
        elif name == "server_cost":
            out.append(Planned(name, _server_cost_job(ctx, plan.server_cost_requests)))
        elif name in checkcache.WORKLOADS and writer is not None:
            p = plan.points
            for label, job, shape in checkcache.jobs(ctx, name, p.size, [p.low, p.high], writer):
                add(label, job, shape)
        else:
            for c in plan.concurrency:
                add(f"{name} c={c}", _concurrency_job(ctx, name, c), (name, None, c))
    return out + extra_jobs(ctx, plan, runnable)


def _skip(ctx: BenchContext, skipped: list[dict[str, str]], name: str, reason: str) -> None:
    ctx.progress.skip(name, reason)
    skipped.append({"name": name, "reason": reason})


def _uvloop_shapes(
    ctx: BenchContext,
    plan: Plan,
    runnable: list[str],
    skipped: list[dict[str, str]],
    uvloop: loops.UvloopThread | None,
) -> set[Shape]:
    """The shapes of the +uvloop rows to run; when uvloop is missing, none, and each such row
    is reported as skipped with the reason."""
    wanted = [name for name in plan.uvloop_workloads if name in runnable]
    reason = loops.skip_reason() if uvloop is not None else "no uvloop thread in this run"
    if reason is not None:
        for name in wanted:
            _skip(ctx, skipped, loops.variant_name(name), reason)
        return set()
    return {shape for shape in plan.uvloop_shapes() if shape[0] in wanted}


def extra_jobs(ctx: BenchContext, plan: Plan, runnable: list[str]) -> list[Planned]:
    """Spread-mode rows (in a hot run) and multi-process rows, at the extra scope size (a quick
    run: in its first round only)."""
    out: list[Planned] = []
    size = plan.extra_scope_size
    every_round = not plan.quick
    if not ctx.settings.spread:
        for name in (n for n in plan.spread_workloads if n in runnable and n in SCOPED):
            for c in plan.extra_concurrency:
                label = f"{name} spread b={size} c={c}"
                job = _scoped_job(ctx, name, size, c, spread=True)
                out.append(Planned(label, job, every_round))
    if plan.processes > 1:
        for name in (n for n in plan.mp_workloads if n in runnable and n in SCOPED):
            for c in (c for c in plan.extra_concurrency if c >= plan.processes):
                label = f"{name} x{plan.processes} processes b={size} c={c}"
                job = _mp_job(ctx, name, size, c, plan.processes)
                out.append(Planned(label, job, every_round))
    return out


def _uvloop_job(thread: loops.UvloopThread, name: str, size: int | None, concurrency: int) -> Job:
    """``name`` on the uvloop thread, with the thread's twin of the run's context."""

    async def on_twin(twin: BenchContext) -> Row:
        if name in SCOPED and size is not None:
            return await workloads.run_budgetkit(twin, name, size, concurrency)
        return await PER_CONCURRENCY[name](twin, concurrency)

    async def job() -> Row:
        return loops.as_variant(await thread.run(on_twin))

    return job


def _scoped_job(
    ctx: BenchContext, name: str, size: int, concurrency: int, spread: bool | None = None
) -> Job:
    if name == "postgres_for_update":
        return lambda: postgres.postgres_for_update(ctx, size, concurrency)
    return lambda: workloads.run_budgetkit(ctx, name, size, concurrency, spread)


def _mp_job(ctx: BenchContext, name: str, size: int, concurrency: int, processes: int) -> Job:
    return lambda: multiproc.run_multiprocess(ctx, name, size, concurrency, processes)


def _ceiling_job(ctx: BenchContext, requests: int) -> Job:
    return lambda: ceiling.server_ceiling_debit(ctx, requests)


def _server_cost_job(ctx: BenchContext, requests: int) -> Job:
    return lambda: server_cost.measure_all(ctx, requests)


def _concurrency_job(ctx: BenchContext, name: str, concurrency: int) -> Job:
    return lambda: PER_CONCURRENCY[name](ctx, concurrency)


@dataclass(slots=True)
class Outcome:
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)


async def run_jobs(ctx: BenchContext, plan: Plan, pg: Postgres) -> Outcome:
    """Every planned job, ``plan.rounds`` times over (a job not run in every round: once);
    each row of a job merged over its rounds."""
    outcome = Outcome()
    uvloop = loops.UvloopThread(ctx)
    writer = checkcache.WriterProcess()  # started by the first row that needs it
    try:
        planned = jobs(ctx, plan, pg, outcome.skipped, uvloop, writer)
        per_job: dict[str, list[list[Row]]] = {p.label: [] for p in planned}
        repeated = sum(p.every_round for p in planned)
        ctx.progress.start(len(planned) + repeated * (plan.rounds - 1))
        try:
            for round_index in range(plan.rounds):
                this_round = [p for p in planned if round_index == 0 or p.every_round]
                await _run_round(ctx, this_round, round_index, plan.rounds, per_job, outcome)
        finally:
            ctx.progress.stop()
    finally:
        await writer.aclose()
        await uvloop.aclose()
    outcome.rows = [merge_rounds(rows) for rounds in per_job.values() for rows in _by_row(rounds)]
    return outcome


def _by_row(rounds: list[list[Row]]) -> list[list[Row]]:
    """The rounds of one job regrouped per row: [[row 1 of each round], [row 2 ...], ...]."""
    width = max((len(rows) for rows in rounds), default=0)
    return [[rows[i] for rows in rounds if i < len(rows)] for i in range(width)]


async def _run_round(
    ctx: BenchContext,
    planned: list[Planned],
    round_index: int,
    rounds: int,
    per_job: dict[str, list[list[Row]]],
    outcome: Outcome,
) -> None:
    tag = f" round {round_index + 1}/{rounds}" if rounds > 1 else ""
    for index, planned_job in enumerate(planned, start=1):
        label = planned_job.label
        ctx.progress.step(f"[{index}/{len(planned)}{tag}] {label}")
        started = time.perf_counter()
        try:
            result = await planned_job.job()
        except Exception as error:  # BenchError, Redis, asyncpg, limits...: report, go on
            message = f"{_error_name(error)}: {error}"
            ctx.progress.fail(label + tag, message)
            outcome.failed.append({"name": label + tag, "error": message})
        else:
            rows = result if isinstance(result, list) else [result]
            per_job[label].append(rows)
            took = time.perf_counter() - started
            for i, row in enumerate(rows, start=1):
                ctx.progress.row(row, took if i == len(rows) else None)
        finally:
            await ctx.cleanup()
            ctx.progress.advance()


def _error_name(error: Exception) -> str:
    known = (BenchError, BudgetkitError, RedisError, OSError)
    kind = type(error)
    return kind.__name__ if isinstance(error, known) else f"{kind.__module__}.{kind.__name__}"


async def run(
    url: str, plan: Plan, progress: Progress, command: str, pg: Postgres | None = None
) -> dict[str, Any]:
    """Runs the plan against ``url``; returns the report document."""
    pg = pg or Postgres()
    admin = Redis.from_url(url, decode_responses=True)
    try:
        server: dict[str, Any] = await admin.info("server")
        prefix = f"bkbench{secrets.token_hex(4)}"
        ctx = BenchContext(url, admin, prefix, plan.settings, progress, pg.url, pg.cpu)
        started = time.perf_counter()
        try:
            outcome = await run_jobs(ctx, plan, pg)
        finally:
            await ctx.cleanup()
        elapsed_s = time.perf_counter() - started
    finally:
        await admin.aclose()
    machine = machine_info(server) | {"workloads_s": round(elapsed_s, 1)}
    doc = document(outcome.rows, compute_ratios(outcome.rows), machine, command)
    return doc | {"skipped": outcome.skipped, "failed": outcome.failed}
