"""The check cache rows (issue 17): ``check`` answered from memory, with and without a writer.

- ``check_cached``: ``check`` of one hot scope by a kit with ``enable_check_cache(heartbeat_ms=
  50)``, after the cache serves (a heartbeat came back) and the scope is cached (the first
  check of an organization starts tracking it, the next one fills).
- ``check_cached+writer`` and ``check+writer``: the same with and without the cache while a
  second process (``WriterProcess``) debits the same scope 100 times a second: every debit
  invalidates the cached scope (Redis pushes its budget keys), and the next check refills it.
- ``check_cache_staleness``: how long another process's write stays invisible. The writer
  process debits once and notes (CLOCK_MONOTONIC, shared by the processes of one host) when the
  debit was sent and when its reply came back; this process keeps calling the cached
  ``check_tool`` (whose balances show every debit), yielding to the event loop between calls,
  until the answer changes. The row's percentiles are from the writer's acknowledged reply to
  that first changed answer (negative when the push beat the reply to the writer's Python);
  its metrics add the time from the send, and each sample starts from an answer served from
  memory. ``ops_per_s`` is samples per second.

Each task of the cached rows yields to the event loop after every check, outside the timed call
(``run_timed(yield_between=True)``): a check answered from memory completes without waiting, so
a task checking in a loop would otherwise never let the tracking connection's reader or the
heartbeat run, and the cache would stop serving after its lease (correct, but not what an
application that awaits anything between two checks sees). The uncached rows do not need it.
The rows' notes and metrics give the cache's hit rate over warm-up and window.

One writer process serves every row of a run (``WriterProcess``: started on first use, a pipe of
commands), so the rows do not each pay a process start.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.context import BenchContext
from benchmarks.measure import NS_PER_US, BenchError, Measurement, Op, Row
from benchmarks.workloads import DEBIT_USD, check_op, make_scopes, scope_of
from budgetkit._core.checkcache import CheckCacheStats
from budgetkit._core.client import BudgetKit
from budgetkit._core.scope import Scope

CACHED = "check_cached"
STALENESS = "check_cache_staleness"
WRITER_SUFFIX = "+writer"
#: The workload names of this module (``--only``); each makes several rows.
WORKLOADS = (CACHED, STALENESS)
HEARTBEAT_MS = 50
WRITER_RATE_HZ = 100.0
SERVING_WAIT_S = 5.0
SERVING_POLL_S = 0.002
START_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 10.0
#: A staleness sample waits at most this long for the write to show (then the row fails).
VISIBLE_WAIT_S = 5.0
#: Tries to get the scope answered from memory before a staleness sample.
HIT_TRIES_MAX = 200
HIT_RETRY_S = 0.001
#: A staleness row has at least this many samples, however short the window (at most
#: SAMPLES_WAIT_MAX_S more).
SAMPLES_MIN = 50
SAMPLES_WAIT_MAX_S = 10.0


def unavailable_reason() -> str | None:
    """Why the check cache rows cannot run with this build, or None."""
    if not hasattr(BudgetKit, "enable_check_cache"):
        return "BudgetKit has no check cache in this build"
    return None


# -- the writer process --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """The scope a writer debits: ``scope_of(org, size)`` under ``prefix`` on ``url``."""

    url: str
    prefix: str
    org: str
    size: int


@dataclass(frozen=True, slots=True)
class PaceReport:
    """What the writer did while pacing: debits, errors, seconds."""

    debits: int
    errors: int
    first_error: str
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.debits / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Pacer:
    """Debits of one target at a steady rate (no bursts to catch up after a late one)."""

    def __init__(self, kit: Any, scope: Scope, rate_hz: float) -> None:
        self.kit = kit
        self.scope = scope
        self.interval_s = 1.0 / rate_hz
        self.started = time.monotonic()
        self.next_at = self.started
        self.debits = 0
        self.errors = 0
        self.first_error = ""

    def timeout(self) -> float:
        return max(0.0, self.next_at - time.monotonic())

    def debit(self) -> None:
        try:
            self.kit.debit(self.scope, {"usd": DEBIT_USD}, meter_source="bench-writer")
            self.debits += 1
        except Exception as error:  # reported with the row
            self.errors += 1
            self.first_error = self.first_error or f"{type(error).__name__}: {error}"
        self.next_at = max(self.next_at + self.interval_s, time.monotonic())

    def report(self) -> PaceReport:
        elapsed = time.monotonic() - self.started
        return PaceReport(self.debits, self.errors, self.first_error, elapsed)


def writer_main(conn: Connection) -> None:
    """Entry point of the writer process: serves the commands of WriterProcess on ``conn``.

    ``("pace", target, rate_hz)`` starts debiting the target at that rate (answer
    ``("pacing",)``); ``("stop",)`` ends it (``("stopped", PaceReport)``); ``("write", target)``
    debits once (``("written", sent_ns, acked_ns)``, CLOCK_MONOTONIC); ``("exit",)`` ends the
    process. A failure is answered ``("error", text)``."""
    import budgetkit.sync as bk_sync  # the blocking client: this process has no event loop

    kits: dict[tuple[str, str], Any] = {}

    def kit_of(target: Target) -> Any:
        key = (target.url, target.prefix)
        if key not in kits:
            kits[key] = bk_sync.BudgetKit.from_url(target.url, prefix=target.prefix, batching=False)
        return kits[key]

    pacer: _Pacer | None = None
    try:
        conn.send(("ready",))
        while True:
            if pacer is not None and not conn.poll(pacer.timeout()):
                pacer.debit()
                continue
            message = conn.recv()
            kind = message[0]
            try:
                if kind == "exit":
                    return
                if kind == "pace":
                    target, rate_hz = message[1], message[2]
                    pacer = _Pacer(kit_of(target), scope_of(target.org, target.size), rate_hz)
                    conn.send(("pacing",))
                elif kind == "stop":
                    report = pacer.report() if pacer is not None else PaceReport(0, 0, "", 0.0)
                    pacer = None
                    conn.send(("stopped", report))
                elif kind == "write":
                    target = message[1]
                    kit, scope = kit_of(target), scope_of(target.org, target.size)
                    sent = time.monotonic_ns()
                    kit.debit(scope, {"usd": DEBIT_USD}, meter_source="bench-writer")
                    conn.send(("written", sent, time.monotonic_ns()))
                else:
                    conn.send(("error", f"unknown command {kind!r}"))
            except Exception as error:
                conn.send(("error", f"{type(error).__name__}: {error}"))
    except (EOFError, OSError, KeyboardInterrupt):  # the parent went away
        return
    finally:
        for kit in kits.values():
            with contextlib.suppress(Exception):
                kit.close()


class WriterProcess:
    """A second process that debits on command (``writer_main``), started on first use
    (multiprocessing ``spawn``: nothing of this process's event loop is inherited)."""

    def __init__(self) -> None:
        self._process: Any = None
        self._conn: Connection | None = None

    async def _connection(self) -> Connection:
        if self._conn is not None:
            return self._conn
        mp = multiprocessing.get_context("spawn")
        parent, child = mp.Pipe()
        process = mp.Process(target=writer_main, args=(child,), daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, parent
        await self._receive("ready", START_TIMEOUT_S)
        return parent

    async def _receive(self, expected: str, timeout_s: float = REPLY_TIMEOUT_S) -> tuple[Any, ...]:
        conn = self._conn
        if conn is None:
            raise BenchError("the writer process is not running")
        if not await asyncio.to_thread(conn.poll, timeout_s):
            raise BenchError(f"the writer process did not answer {expected!r} in {timeout_s} s")
        return self._reply(conn, expected)

    @staticmethod
    def _reply(conn: Connection, expected: str) -> tuple[Any, ...]:
        reply: tuple[Any, ...] = conn.recv()
        if reply[0] != expected:
            raise BenchError(f"writer process: {reply}")
        return reply

    async def pace(self, target: Target, rate_hz: float = WRITER_RATE_HZ) -> None:
        """Starts debiting ``target`` ``rate_hz`` times a second until ``stop``."""
        conn = await self._connection()
        conn.send(("pace", target, rate_hz))
        await self._receive("pacing")

    async def stop(self) -> PaceReport:
        conn = await self._connection()
        conn.send(("stop",))
        report: PaceReport = (await self._receive("stopped"))[1]
        return report

    async def send_write(self, target: Target) -> None:
        """Has the writer debit ``target`` once; ``written`` returns its times."""
        conn = await self._connection()
        conn.send(("write", target))

    async def written(self) -> tuple[int, int]:
        """The send and acknowledgement times (``time.monotonic_ns``) of the write asked for."""
        _, sent, acked = await self._receive("written")
        return int(sent), int(acked)

    def written_blocking(self, timeout_s: float = REPLY_TIMEOUT_S) -> tuple[int, int]:
        """``written`` without giving the event loop a turn (it stays blocked meanwhile: for
        measurements of a stalled loop)."""
        conn = self._conn
        if conn is None or not conn.poll(timeout_s):
            raise BenchError(f"the writer process did not answer 'written' in {timeout_s} s")
        _, sent, acked = self._reply(conn, "written")
        return int(sent), int(acked)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        process, self._process = self._process, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.send(("exit",))
            conn.close()
        if process is not None:
            await asyncio.to_thread(process.join, JOIN_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, JOIN_TIMEOUT_S)


# -- the cached kit ------------------------------------------------------------------------------


async def wait_serving(kit: BudgetKit, timeout_s: float = SERVING_WAIT_S) -> None:
    """Until the kit's check cache serves (a heartbeat came back)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = kit.check_cache_stats()
        if stats is None:
            raise BenchError("the check cache is not enabled")
        if stats.serving:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the check cache did not start serving in {timeout_s} s")
        await asyncio.sleep(SERVING_POLL_S)


async def enable_and_prime(kit: BudgetKit, scopes: list[Scope]) -> None:
    """Enables the cache, waits until it serves, and checks each scope until it is answered
    from memory (the first check of an organization starts tracking it: no fill)."""
    await kit.enable_check_cache(heartbeat_ms=HEARTBEAT_MS)
    await wait_serving(kit)
    for scope in dict.fromkeys(scopes):
        await until_hit(kit, _checker(kit, scope))


def _checker(kit: BudgetKit, scope: Scope) -> Callable[[], Awaitable[Any]]:
    return lambda: kit.check(scope)


async def until_hit(kit: BudgetKit, call: Callable[[], Awaitable[Any]]) -> Any:
    """``call()`` (a check of the cached kit) again until it is answered from memory; its
    answer."""
    for _ in range(HIT_TRIES_MAX):
        before = _stats(kit).hits
        answer = await call()
        if _stats(kit).hits > before:
            return answer
        await asyncio.sleep(HIT_RETRY_S)
    raise BenchError(f"no check was answered from memory in {HIT_TRIES_MAX} tries")


def _stats(kit: BudgetKit) -> CheckCacheStats:
    stats = kit.check_cache_stats()
    if stats is None:
        raise BenchError("the check cache is not enabled")
    return stats


#: The counters of CheckCacheStats (every field but ``serving``).
COUNTERS = tuple(name for name in CheckCacheStats.model_fields if name != "serving")


def counts_between(before: CheckCacheStats, after: CheckCacheStats) -> CheckCacheStats:
    """The cache's counters over a run (``after - before``)."""
    counts = {name: getattr(after, name) - getattr(before, name) for name in COUNTERS}
    return CheckCacheStats(**counts, serving=after.serving)


def counts_note(counts: CheckCacheStats) -> str:
    return (
        f"hit rate {100 * counts.hit_rate:.2f}% ({counts.hits} hits, {counts.misses} misses, "
        f"warm-up included), {counts.invalidations} invalidations, {counts.fills} fills "
        f"({counts.fills_refused} refused), {counts.lease_expiries} lease expiries, "
        f"{counts.resets} resets"
    )


def counts_metrics(counts: CheckCacheStats) -> dict[str, float | None]:
    return {
        "hit_rate": round(counts.hit_rate, 5),
        "invalidations": float(counts.invalidations),
        "fills_refused": float(counts.fills_refused),
        "lease_expiries": float(counts.lease_expiries),
    }


# -- the rows ------------------------------------------------------------------------------------

#: A row's shape as the runner keys it: (row name, scope size, concurrency).
Shape = tuple[str, int | None, int]
Job = Callable[[], Awaitable[Row]]
#: (row label, job, shape) of the runner; a job makes one row.
Planned = tuple[str, Job, Shape]


def jobs(
    ctx: BenchContext, name: str, size: int, concurrency: list[int], writer: WriterProcess
) -> list[Planned]:
    """The rows of workload ``name`` at scope size ``size``: for ``check_cached``, at each
    ``concurrency`` (the ratios' low and high), check_cached, check_cached+writer and
    check+writer; for ``check_cache_staleness`` one row."""
    if name == STALENESS:
        return [(f"{STALENESS} b={size}", _staleness_job(ctx, size, writer), (name, size, 1))]
    out: list[Planned] = []
    for c in sorted(set(concurrency)):
        for row_name, cached, with_writer in (
            (CACHED, True, False),
            (CACHED + WRITER_SUFFIX, True, True),
            ("check" + WRITER_SUFFIX, False, True),
        ):
            job = _check_job(ctx, size, c, cached, writer if with_writer else None)
            out.append((f"{row_name} b={size} c={c}", job, (row_name, size, c)))
    return out


def _staleness_job(ctx: BenchContext, size: int, writer: WriterProcess) -> Job:
    return lambda: staleness_row(ctx, size, writer)


def _check_job(
    ctx: BenchContext, size: int, concurrency: int, cached: bool, writer: WriterProcess | None
) -> Job:
    return lambda: check_row(ctx, size, concurrency, cached, writer)


async def check_row(
    ctx: BenchContext, size: int, concurrency: int, cached: bool, writer: WriterProcess | None
) -> Row:
    """``check`` of one hot scope by ``concurrency`` tasks, with the check cache or without, and
    with a writer process debiting the scope WRITER_RATE_HZ times a second or without."""
    name = (CACHED if cached else "check") + (WRITER_SUFFIX if writer is not None else "")
    client = ctx.client(concurrency)
    kit = ctx.kit(client)
    try:
        scopes = await make_scopes(kit, size, concurrency, spread=False)
        if cached:
            await enable_and_prime(kit, scopes)
        ops: list[Op] = [check_op(kit, scope) for scope in scopes]
        before = kit.check_cache_stats()
        if writer is not None:
            await writer.pace(Target(ctx.url, ctx.prefix, scopes[0].organization_id, size))
        try:
            measurement = await ctx.measure(ops, yield_between=cached)
        finally:
            paced = None if writer is None else await writer.stop()
        after = kit.check_cache_stats()
    finally:
        await kit.disable_check_cache()
        await client.aclose()
    notes: list[str] = []
    metrics: dict[str, float | None] = {}
    if before is not None and after is not None:
        counts = counts_between(before, after)
        notes.append(f"check cache, heartbeat {HEARTBEAT_MS} ms: {counts_note(counts)}")
        metrics |= counts_metrics(counts)
        notes.append("each task yields to the event loop between checks (untimed)")
    else:
        notes.append("no check cache: one round trip per check")
    if paced is not None:
        notes.append(_writer_note(paced))
        metrics["writer_debits_per_s"] = round(paced.rate, 1)
    return measurement.row(
        name, concurrency, size, mode="hot", notes="; ".join(notes), metrics=metrics or None
    )


def _writer_note(paced: PaceReport) -> str:
    note = (
        f"writer: another process debited the scope {paced.debits} times in "
        f"{paced.elapsed_s:.2f} s ({paced.rate:.0f}/s, target {WRITER_RATE_HZ:g}/s)"
    )
    if paced.errors:
        note += f", {paced.errors} errors (first: {paced.first_error})"
    return note


@dataclass(slots=True)
class Staleness:
    """Samples of how long another process's debit stayed invisible to the cached check_tool:
    from its acknowledged reply and from its send to the first answer showing it (ns)."""

    from_ack_ns: list[int] = field(default_factory=list)
    from_send_ns: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    def add(self, sent_ns: int, acked_ns: int, seen_ns: int) -> None:
        self.from_ack_ns.append(seen_ns - acked_ns)
        self.from_send_ns.append(seen_ns - sent_ns)

    @property
    def count(self) -> int:
        return len(self.from_ack_ns)


def percentile_us(samples: list[int], fraction: float) -> float | None:
    """Nearest-rank percentile of ``samples`` (ns) in µs, as Measurement.percentile_us."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, int(fraction * len(ordered))))
    return round(ordered[rank] / NS_PER_US, 1)


async def one_sample(
    kit: BudgetKit, scope: Scope, writer: WriterProcess, target: Target
) -> tuple[int, int, int]:
    """One write by the writer process and the moment the cached ``check_tool`` shows it:
    (sent, acknowledged, seen), ``time.monotonic_ns``. Starts from an answer served from
    memory; yields to the event loop between checks (the tracking reader runs then)."""
    shown = await until_hit(kit, lambda: kit.check_tool(scope))
    await writer.send_write(target)
    deadline = time.monotonic() + VISIBLE_WAIT_S
    while True:
        await asyncio.sleep(0)
        if await kit.check_tool(scope) != shown:
            seen = time.monotonic_ns()
            break
        if time.monotonic() > deadline:
            raise BenchError(f"another process's debit stayed invisible for {VISIBLE_WAIT_S} s")
    sent, acked = await writer.written()
    return sent, acked, seen


async def staleness_samples(
    kit: BudgetKit,
    scope: Scope,
    writer: WriterProcess,
    target: Target,
    warmup_s: float,
    duration_s: float,
    samples_min: int = SAMPLES_MIN,
    extra_max_s: float = SAMPLES_WAIT_MAX_S,
) -> Staleness:
    """Samples (``one_sample``) for ``duration_s`` and until ``samples_min`` (at most
    ``extra_max_s`` more), after ``warmup_s`` of unrecorded ones (at least one)."""
    warm_until = time.monotonic() + warmup_s
    while True:
        await one_sample(kit, scope, writer, target)
        if time.monotonic() >= warm_until:
            break
    out = Staleness()
    started = time.monotonic()
    end, hard_end = started + duration_s, started + duration_s + extra_max_s
    while True:
        out.add(*await one_sample(kit, scope, writer, target))
        now = time.monotonic()
        if (now >= end and out.count >= samples_min) or now >= hard_end:
            break
    out.wall_s = time.monotonic() - started
    return out


async def staleness_row(ctx: BenchContext, size: int, writer: WriterProcess) -> Row:
    """The ``check_cache_staleness`` row (see the module's docstring)."""
    client = ctx.client(1)
    kit = ctx.kit(client)
    try:
        (scope,) = await make_scopes(kit, size, 1, spread=False)
        await enable_and_prime(kit, [scope])
        target = Target(ctx.url, ctx.prefix, scope.organization_id, size)
        before = kit.check_cache_stats()
        settings = ctx.settings
        samples = await staleness_samples(
            kit, scope, writer, target, settings.warmup_s, settings.duration_s
        )
        after = kit.check_cache_stats()
    finally:
        await kit.disable_check_cache()
        await client.aclose()
    ack = samples.from_ack_ns
    negative = sum(1 for ns in ack if ns < 0)
    lease_ms = 2 * HEARTBEAT_MS
    notes = [
        f"ops/s = samples per second; p50/p99: from another process's acknowledged debit to the "
        f"first cached check_tool showing it; from its send: p50 "
        f"{percentile_us(samples.from_send_ns, 0.5)} µs, p99 "
        f"{percentile_us(samples.from_send_ns, 0.99)} µs; {negative} of {samples.count} shown "
        f"before the writer had its reply; lease {lease_ms} ms (heartbeat {HEARTBEAT_MS} ms)",
    ]
    metrics: dict[str, float | None] = {
        "from_send_p50_us": percentile_us(samples.from_send_ns, 0.5),
        "from_send_p99_us": percentile_us(samples.from_send_ns, 0.99),
        "lease_ms": float(lease_ms),
    }
    if before is not None and after is not None:
        counts = counts_between(before, after)
        notes.append(f"check cache: {counts_note(counts)}")
        metrics |= counts_metrics(counts)
    measurement = Measurement(
        latencies_ns=sorted(ack),
        errors=0,
        first_error="",
        wall_s=samples.wall_s,
        client_cpu_s=0.0,
        server_cpu_s=None,
        used_memory_bytes=None,
    )
    row = measurement.row(STALENESS, 1, size, mode="hot", notes="; ".join(notes), metrics=metrics)
    row.client_cpu_s = None
    return row
