"""Measures the check cache (issue 17): are its answers exact, and how soon do others' writes show?

(a) Exactness under stress. One kit with ``enable_check_cache(heartbeat_ms)`` runs ``--ops``
    mixed operations (debit, reserve then commit or release, top_up, resume, check, check_tool)
    on four overlapping scopes of two organizations (an org, user and agent budget shared
    between scopes; hour and day periods; soft limits; holds of 1 s to 2 min), one to six at a
    time (concurrent operations of one batch race the cache's fills against its own writes).
    An uncached kit on the same server and the same injected clock is the reference: after
    every batch with an acknowledged write of the cached kit, ``check`` and ``check_tool`` of
    every scope must give the same answers from both; a difference is a stale answer (the
    summary and the JSON describe each one with the events before it). Meanwhile:
    - every ~``--kill-every`` operations the cache's tracking connection is killed
      (``CLIENT KILL ID`` of ``kit._check_cache._tracker``'s ``CLIENT ID``), while a batch runs;
    - every ~``--stall-every`` operations the event loop is stalled on purpose
      (``time.sleep(--stall-ms)``) in the middle of a batch, requests in flight, while another
      client (the blocking ``budgetkit.sync`` kit, its own connection) debits and tops up the
      same budgets;
    - the shared clock moves on now and then (seconds: holds expire; minutes to a day: periods
      roll over).
    Reported: operations, comparisons, stale answers (must be 0), the cache's counters (hits,
    misses, hit rate, fills, refused fills, invalidations, resets, lease expiries; the
    comparisons' own checks included), kills, stalls and errors by type (an expired hold's
    commit, a release of a hold already gone: the operations' expected refusals).
(b) Other clients' writes. A second process (benchmarks.checkcache.WriterProcess, the blocking
    client) debits a scope that a cached kit (server clock) keeps checking with
    ``check_tool``, yielding to the event loop between checks; invalidation latency is the
    time from the writer's acknowledged debit (and from its send) to the first cached answer
    showing it, each sample starting from an answer served from memory (p50/p99/max over
    ``--samples``). Then ``--stalled-samples`` more with this process's event loop blocked for
    1.5 leases right after asking for the write (and until its acknowledgement): the first
    check after the stall must show the write (the lease expired: nothing is served until a
    heartbeat comes back). The lease is ``LEASE_BEATS`` (2) x ``heartbeat_ms``.
(c) Delayed pushes (only with ``--push-delay-ms D``): the cached kit talks to Redis through a
    TCP proxy that delays every byte Redis sends it by D ms (a slow or congested path: pushes
    late, not lost); another client writes directly, at a random moment after an answer served
    from memory, and probes started every millisecond record every stale answer still served
    from memory after the write's acknowledgement. Reports the latest one per trial against the
    lease: with D above the lease it shows whether staleness is bounded by the lease or by the
    push's delay. (It is the lease: the lease runs from when the last heartbeat that came back
    was sent, so with D above the lease nothing is served from memory at all.)

Usage:
    python3 scripts/measure_check_cache.py --ops 100000 --json out.json
    (--heartbeat-ms 50, --seed 1, --samples 2000, --stalled-samples 50, --kill-every 2000,
    --stall-every 5000, --stall-ms 100, --push-delay-ms 0 (c: off), --delay-trials 10,
    --skip-stress; exit status 1 when a stale answer was seen in (a) or in (b)'s stalled loop)
It starts a private redis-server on a free loopback port (scripts/redis_server.py), prints a
short summary and writes the JSON (``--json``). About 2-3 minutes for 100,000 operations on a
2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # redis_server
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the benchmarks package

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis_server import RedisServer

import budgetkit as bk
import budgetkit.sync as bk_sync
from benchmarks import checkcache
from benchmarks.workloads import create_scope_budgets, scope_of
from budgetkit._core.checkcache import LEASE_BEATS

PREFIX = "bkcc"
ORG_A, ORG_B = "org_cca", "org_ccb"
SCOPES = (
    bk.Scope(ORG_A, user_id="u1", session_id="s1", agent_id="a1"),
    bk.Scope(ORG_A, user_id="u1", session_id="s2"),
    bk.Scope(ORG_A, user_id="u2", session_id="s3", agent_id="a1"),
    bk.Scope(ORG_B, user_id="u9", session_id="s9"),
)
#: (org, level, subject, limit, soft limit, period, rollover_max)
BUDGETS: tuple[tuple[str, str, str, float, float | None, str | None, float | None], ...] = (
    (ORG_A, "org", ORG_A, 400, None, "day", None),
    (ORG_A, "user", "u1", 60, 50, "hour", 10),
    (ORG_A, "user", "u2", 60, None, "hour", None),
    (ORG_A, "agent", "a1", 80, 70, None, None),
    (ORG_A, "session", "s1", 12, 9, None, None),
    (ORG_A, "session", "s2", 12, None, "hour", None),
    (ORG_A, "session", "s3", 12, 10, None, None),
    (ORG_B, "user", "u9", 40, None, "day", None),
    (ORG_B, "session", "s9", 8, 6, "hour", None),
)
#: Operation kinds and their weights.
KINDS = {
    "check": 22,
    "check_tool": 13,
    "debit": 24,
    "reserve": 12,
    "commit": 8,
    "release": 5,
    "top_up": 9,
    "resume": 7,
}
WRITES = frozenset({"debit", "reserve", "commit", "release", "top_up", "resume"})
BATCH_SIZES = (1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 6)
T0 = datetime(2031, 3, 1, 0, 0, tzinfo=UTC)
CLOCK_EVERY = 300
HISTORY = 40
STALE_DETAILS_MAX = 20
PROGRESS_EVERY = 10_000
#: Part (c)'s probes: one every millisecond, each a round trip of 2 x the delay when missed.
PROBE_CONNECTIONS_MAX = 2000


class Clock:
    """The shared injected clock of both kits and the other client."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(slots=True)
class Stress:
    """What part (a) saw."""

    ops: int = 0
    batches: int = 0
    comparisons: int = 0
    stale: int = 0
    stale_details: list[dict[str, Any]] = field(default_factory=list)
    kills: int = 0
    kills_skipped: int = 0
    stalls: int = 0
    other_writes: int = 0
    clock_moves: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    history: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY)
    )

    def note(self, text: str) -> None:
        self.history.append(f"op {self.ops}: {text}")


class Workload:
    """The cached kit's operations on SCOPES, with the holds it has granted."""

    def __init__(self, kit: bk.BudgetKit, ids: list[tuple[str, str]], rng: random.Random) -> None:
        self.kit = kit
        self.ids = ids  # (org, budget id)
        self.rng = rng
        self.holds: list[bk.Reservation] = []

    def pick(self) -> str:
        kinds = list(KINDS)
        kind = self.rng.choices(kinds, weights=[KINDS[k] for k in kinds])[0]
        if kind in ("commit", "release") and not self.holds:
            kind = "reserve"
        return kind

    def op(self, kind: str, stress: Stress) -> Callable[[], Awaitable[None]]:
        rng, kit = self.rng, self.kit
        scope = rng.choice(SCOPES)

        async def run() -> None:
            try:
                if kind == "check":
                    await kit.check(scope)
                elif kind == "check_tool":
                    await kit.check_tool(scope)
                elif kind == "debit":
                    await kit.debit(scope, {"usd": rng.choice([0.01, 0.2, 1, 3])})
                elif kind == "reserve":
                    ttl = rng.choice([1, 5, 30, 120])
                    hold = await kit.reserve(scope, {"usd": rng.choice([0.1, 0.5, 2])}, ttl)
                    if hold.granted:
                        self.holds.append(hold)
                elif kind in ("commit", "release"):
                    if not self.holds:  # taken by an earlier operation of the batch
                        stress.errors[f"{kind}: no hold left (checked instead)"] += 1
                        await kit.check(scope)
                        return
                    hold = self.holds.pop(rng.randrange(len(self.holds)))
                    if kind == "commit":
                        await kit.commit(hold, {"usd": rng.choice([0.05, 0.5, 2.5])})
                    else:
                        await kit.release(hold)
                elif kind == "top_up":
                    org, budget_id = rng.choice(self.ids)
                    await kit.top_up(org, budget_id, rng.choice([1, 5, 20]))
                else:
                    levels = rng.sample(["session", "user", "agent"], rng.randint(1, 3))
                    await kit.resume(scope, levels=levels)
            except bk.BudgetUnavailable:
                raise  # the store stays reachable here: not an expected refusal
            except bk.BudgetkitError as error:
                stress.errors[f"{kind}: {type(error).__name__}"] += 1

        return run


async def answers(kit: bk.BudgetKit) -> list[Any]:
    """check and check_tool of every scope, one after another."""
    out: list[Any] = []
    for scope in SCOPES:
        out.append(await kit.check(scope))
        out.append(await kit.check_tool(scope))
    return out


async def reference(kit: bk.BudgetKit) -> list[Any]:
    """The same answers of the uncached kit, concurrently (one pipeline when batching)."""
    calls = [call for scope in SCOPES for call in (kit.check(scope), kit.check_tool(scope))]
    return list(await asyncio.gather(*calls))


async def compare(cached: bk.BudgetKit, plain: bk.BudgetKit, stress: Stress, batch: str) -> None:
    mine = await answers(cached)
    theirs = await reference(plain)
    stress.comparisons += len(mine)
    for index, (got, want) in enumerate(zip(mine, theirs, strict=True)):
        if got == want:
            continue
        stress.stale += 1
        if len(stress.stale_details) < STALE_DETAILS_MAX:
            again = (await answers(cached))[index]
            stats = cached.check_cache_stats()
            stress.stale_details.append(
                {
                    "op": stress.ops,
                    "scope": str(SCOPES[index // 2]),
                    "call": "check" if index % 2 == 0 else "check_tool",
                    "batch": batch,
                    "cached": _dump(got),
                    "uncached": _dump(want),
                    "cached_again_equal": again == want,
                    "stats": None if stats is None else stats.model_dump(),
                    "events_before": list(stress.history),
                }
            )


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json") if hasattr(model, "model_dump") else repr(model)


async def kill_tracking(cached: bk.BudgetKit, admin: Redis, stress: Stress) -> None:
    """CLIENT KILL of the cache's tracking connection (skipped while it reconnects)."""
    cache = cached._check_cache
    tracker = None if cache is None else cache._tracker
    try:
        if tracker is None:
            raise bk.BudgetUnavailable("no tracker")
        client_id = await tracker._command("CLIENT", "ID")
    except (bk.BudgetUnavailable, TimeoutError):
        stress.kills_skipped += 1
        return
    await admin.execute_command("CLIENT", "KILL", "ID", client_id)  # type: ignore[no-untyped-call]
    stress.kills += 1
    stress.note(f"killed tracking connection id {client_id}")


def other_client_writes(
    other: bk_sync.BudgetKit, ids: list[tuple[str, str]], rng: random.Random, stress: Stress
) -> None:
    """Another client's writes, blocking (the event loop of this process waits meanwhile)."""
    for _ in range(3):
        scope = rng.choice(SCOPES)
        other.debit(scope, {"usd": rng.choice([0.01, 0.5, 2])})
        stress.note(f"other client debited {scope}")
    org, budget_id = rng.choice(ids)
    other.top_up(org, budget_id, 2)
    stress.note(f"other client topped up {budget_id}")
    stress.other_writes += 4


async def make_budgets(kit: bk.BudgetKit) -> list[tuple[str, str]]:
    ids = []
    for org, level, subject, limit, soft, period, rollover in BUDGETS:
        budget = await kit.create_budget(
            org,
            level,
            subject,
            "usd",
            limit,
            soft_limit=soft,
            period=period,
            rollover_max=rollover,
        )
        ids.append((org, budget.id))
    return ids


async def stress_run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    clock = Clock()
    admin = Redis.from_url(url)
    cached = bk.BudgetKit(Redis.from_url(url), prefix=PREFIX, clock=clock)
    plain = bk.BudgetKit(Redis.from_url(url), prefix=PREFIX, clock=clock)
    other = bk_sync.BudgetKit.from_url(url, prefix=PREFIX, clock=clock)
    stress = Stress()
    started = time.perf_counter()
    try:
        ids = await make_budgets(plain)
        await cached.enable_check_cache(heartbeat_ms=args.heartbeat_ms)
        await checkcache.wait_serving(cached)
        work = Workload(cached, ids, rng)
        next_kill = rng.randint(args.kill_every // 2, args.kill_every * 3 // 2)
        next_stall = rng.randint(args.stall_every // 2, args.stall_every * 3 // 2)
        next_clock = CLOCK_EVERY
        while stress.ops < args.ops:
            size = min(rng.choice(BATCH_SIZES), args.ops - stress.ops)
            kinds = [work.pick() for _ in range(size)]
            batch = ",".join(kinds)
            tasks = [asyncio.ensure_future(work.op(kind, stress)()) for kind in kinds]
            stress.ops += size
            stress.batches += 1
            stress.by_kind.update(kinds)
            stress.note(f"batch {batch}")
            if stress.ops >= next_kill:
                next_kill += rng.randint(args.kill_every // 2, args.kill_every * 3 // 2)
                tasks.append(asyncio.ensure_future(kill_tracking(cached, admin, stress)))
            if stress.ops >= next_stall:
                next_stall += rng.randint(args.stall_every // 2, args.stall_every * 3 // 2)
                for _ in range(2):
                    await asyncio.sleep(0)  # the batch's requests are sent
                stress.note(f"event loop stalled {args.stall_ms} ms, requests in flight")
                stall_end = time.monotonic() + args.stall_ms / 1000
                other_client_writes(other, ids, rng, stress)
                time.sleep(max(0.0, stall_end - time.monotonic()))  # noqa: ASYNC251 (on purpose)
                stress.stalls += 1
            await asyncio.gather(*tasks)
            if WRITES.intersection(kinds):
                await compare(cached, plain, stress, batch)
            if stress.ops >= next_clock:
                next_clock += CLOCK_EVERY
                seconds = rng.choice([0.5, 2, 7, 40, 130, 600, 1800, 3600, 86_400])
                clock.advance(seconds)
                stress.clock_moves += 1
                stress.note(f"clock moved {seconds} s")
                await compare(cached, plain, stress, f"clock +{seconds} s")
            if stress.ops // PROGRESS_EVERY != (stress.ops - size) // PROGRESS_EVERY:
                print(
                    f"  (a) {stress.ops:,} ops, {stress.stale} stale, "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
        stats = cached.check_cache_stats()
    finally:
        await cached.disable_check_cache()
        other.close()
        for kit in (cached, plain):
            await kit.aclose()
        await admin.aclose()
    assert stats is not None
    elapsed = time.perf_counter() - started
    return {
        "ops": stress.ops,
        "ops_by_kind": dict(stress.by_kind),
        "batches": stress.batches,
        "comparisons": stress.comparisons,
        "stale_answers": stress.stale,
        "stale_details": stress.stale_details,
        "tracking_kills": stress.kills,
        "tracking_kills_skipped": stress.kills_skipped,
        "loop_stalls": stress.stalls,
        "stall_ms": args.stall_ms,
        "other_client_writes": stress.other_writes,
        "clock_moves": stress.clock_moves,
        "refusals_by_kind": dict(stress.errors),
        "cache": stats.model_dump() | {"hit_rate": round(stats.hit_rate, 4)},
        "elapsed_s": round(elapsed, 1),
        "ops_per_s": round(stress.ops / elapsed, 1),
    }


def _percentiles(samples_ns: list[int]) -> dict[str, float | None]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": checkcache.percentile_us(ordered, 0.50),
        "p99_us": checkcache.percentile_us(ordered, 0.99),
        "max_us": None if not ordered else round(ordered[-1] / 1000, 1),
        "negative": sum(1 for ns in ordered if ns < 0),
    }


async def stalled_samples(
    kit: bk.BudgetKit,
    scope: bk.Scope,
    writer: checkcache.WriterProcess,
    target: checkcache.Target,
    count: int,
    stall_s: float,
) -> dict[str, Any]:
    """The writer debits while this loop is blocked for ``stall_s`` (and until the debit's
    acknowledgement); the first check after the stall must show it."""
    stale = hits = 0
    for _ in range(count):
        shown = await checkcache.until_hit(kit, lambda: kit.check_tool(scope))
        await writer.send_write(target)
        time.sleep(stall_s)  # noqa: ASYNC251 — the loop is blocked on purpose
        writer.written_blocking()
        before = kit.check_cache_stats()
        first = await kit.check_tool(scope)  # before the loop had a turn
        after = kit.check_cache_stats()
        assert before is not None and after is not None
        hits += after.hits - before.hits
        stale += first == shown
        await checkcache.wait_serving(kit)
    return {
        "samples": count,
        "stall_ms": round(stall_s * 1000, 1),
        "first_check_served_from_memory": hits,
        "stale_answers": stale,
    }


async def other_clients_run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    client = Redis.from_url(url)
    kit = bk.BudgetKit(client, prefix=PREFIX + "b")
    writer = checkcache.WriterProcess()
    scope = scope_of("org_ccw", 3)
    try:
        await create_scope_budgets(kit, scope)
        await kit.enable_check_cache(heartbeat_ms=args.heartbeat_ms)
        await checkcache.wait_serving(kit)
        target = checkcache.Target(url, PREFIX + "b", scope.organization_id, 3)
        before = kit.check_cache_stats()
        samples = await checkcache.staleness_samples(
            kit,
            scope,
            writer,
            target,
            warmup_s=0.5,
            duration_s=0.0,
            samples_min=args.samples,
            extra_max_s=600.0,
        )
        after = kit.check_cache_stats()
        lease_s = LEASE_BEATS * args.heartbeat_ms / 1000
        stalled = await stalled_samples(
            kit, scope, writer, target, args.stalled_samples, 1.5 * lease_s
        )
    finally:
        await kit.disable_check_cache()
        await writer.aclose()
        await kit.aclose()
    assert before is not None and after is not None
    counts = checkcache.counts_between(before, after)
    return {
        "samples": samples.count,
        "samples_per_s": round(samples.count / samples.wall_s, 1),
        "from_ack": _percentiles(samples.from_ack_ns),
        "from_send": _percentiles(samples.from_send_ns),
        "lease_ms": LEASE_BEATS * args.heartbeat_ms,
        "heartbeat_ms": args.heartbeat_ms,
        "cache_during_samples": {
            "hits": counts.hits,
            "misses": counts.misses,
            "hit_rate": round(counts.hit_rate, 4),
            "invalidations": counts.invalidations,
            "lease_expiries": counts.lease_expiries,
        },
        "stalled_loop": stalled,
    }


class DelayProxy:
    """A TCP proxy to Redis on 127.0.0.1 that forwards what clients send at once and delays
    every byte Redis sends back by ``delay_s`` (order kept)."""

    def __init__(self, redis_port: int, delay_s: float) -> None:
        self.redis_port = redis_port
        self.delay_s = delay_s
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        loop = asyncio.get_running_loop()

        async def up() -> None:
            while data := await reader.read(65536):
                upstream_w.write(data)

        async def down() -> None:
            while data := await upstream_r.read(65536):
                loop.call_later(self.delay_s, _write_unless_closed, writer, data)

        try:
            await asyncio.gather(up(), down())
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            upstream_w.close()

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _write_unless_closed(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)


async def _probe_after_write(
    cached: bk.BudgetKit, scope: bk.Scope, old: Any, new: Any, acked: float, window_s: float
) -> dict[str, Any]:
    """After another client's write was acknowledged (at ``acked``, ``time.monotonic``): a
    cached check_tool started every millisecond for ``window_s``; the stale answers (``old``)
    served from memory, and the first answer showing the write (``new``), in ms after the
    acknowledgement."""
    stale: list[float] = []
    shown: list[float] = []

    async def probe() -> None:
        started = time.monotonic()
        before = cached.check_cache_stats()
        answer = await cached.check_tool(scope)  # served from memory: no yield
        after = cached.check_cache_stats()
        served = before is not None and after is not None and after.hits > before.hits
        if answer == old and served:
            stale.append(started - acked)
        elif answer == new:
            shown.append(time.monotonic() - acked)

    probes = []
    while time.monotonic() - acked < window_s:
        probes.append(asyncio.ensure_future(probe()))
        await asyncio.sleep(0.001)
    await asyncio.gather(*probes)
    return {
        "stale_served_from_memory": len(stale),
        "latest_stale_after_ack_ms": round(1000 * max(stale), 1) if stale else None,
        "first_shown_after_ack_ms": round(1000 * min(shown), 1) if shown else None,
    }


async def delayed_pushes_run(url: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Part (c): staleness of answers served from memory when pushes arrive late."""
    rng = random.Random(args.seed)
    delay_s = args.push_delay_ms / 1000
    proxy = DelayProxy(port, delay_s)
    port = await proxy.start()
    proxied = Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=30,
        retry=Retry(NoBackoff(), 0),
        max_connections=PROBE_CONNECTIONS_MAX,
    )
    cached = bk.BudgetKit(proxied, prefix=PREFIX + "c")
    direct = bk.BudgetKit.from_url(url, prefix=PREFIX + "c")
    scope = scope_of("org_ccd", 3)
    trials: list[dict[str, Any]] = []
    try:
        await create_scope_budgets(direct, scope)
        await cached.enable_check_cache(heartbeat_ms=args.heartbeat_ms)
        try:
            await checkcache.wait_serving(cached, timeout_s=NEVER_SERVED_S)
        except checkcache.BenchError:  # every heartbeat comes back later than the lease
            return _delayed_summary(args, [], served=False)
        for _ in range(args.delay_trials):
            old = await checkcache.until_hit(cached, lambda: cached.check_tool(scope))
            await asyncio.sleep(rng.uniform(0, delay_s + args.heartbeat_ms / 1000))
            await direct.debit(scope, {"usd": 0.001})
            acked = time.monotonic()
            new = await direct.check_tool(scope)
            window_s = 2 * delay_s + 0.2
            trials.append(await _probe_after_write(cached, scope, old, new, acked, window_s))
    finally:
        await cached.aclose()
        await direct.aclose()
        await proxy.aclose()
    return _delayed_summary(args, trials, served=True)


def _delayed_summary(
    args: argparse.Namespace, trials: list[dict[str, Any]], *, served: bool
) -> dict[str, Any]:
    lease_ms = LEASE_BEATS * args.heartbeat_ms
    latest = [t["latest_stale_after_ack_ms"] or 0.0 for t in trials]
    return {
        "push_delay_ms": args.push_delay_ms,
        "lease_ms": lease_ms,
        "served_from_memory": served,
        "trials": trials,
        "latest_stale_after_ack_ms": max(latest, default=None),
        "trials_stale_beyond_lease": sum(1 for ms in latest if ms > lease_ms),
    }


#: Part (c): how long to wait for the cache to serve before concluding it never will.
NEVER_SERVED_S = 3.0


def summary(doc: dict[str, Any]) -> list[str]:
    a, b = doc["stress"], doc["other_clients"]
    cache = a["cache"]
    lines = [
        f"(a) {a['ops']:,} ops in {a['batches']:,} batches, {a['elapsed_s']} s "
        f"({a['ops_per_s']:,.0f} ops/s); {a['comparisons']:,} answers compared: "
        f"{a['stale_answers']} stale",
        f"    cache: {cache['hits']:,} hits, {cache['misses']:,} misses (hit rate "
        f"{100 * cache['hit_rate']:.1f}%, comparisons included), {cache['fills']:,} fills "
        f"({cache['fills_refused']:,} refused), {cache['invalidations']:,} invalidations, "
        f"{cache['resets']} resets, {cache['lease_expiries']} lease expiries",
        f"    tracking killed {a['tracking_kills']} times ({a['tracking_kills_skipped']} "
        f"skipped: reconnecting), loop stalled {a['loop_stalls']} times "
        f"({a['stall_ms']} ms, {a['other_client_writes']} other-client writes), clock moved "
        f"{a['clock_moves']} times",
        f"(b) invalidation latency over {b['samples']:,} samples: from the writer's ack p50 "
        f"{b['from_ack']['p50_us']} µs, p99 {b['from_ack']['p99_us']} µs, max "
        f"{b['from_ack']['max_us']} µs ({b['from_ack']['negative']} before the ack); "
        f"from its send p50 {b['from_send']['p50_us']} µs, p99 {b['from_send']['p99_us']} µs",
        f"    lease {b['lease_ms']} ms (heartbeat {b['heartbeat_ms']} ms); stalled loop "
        f"({b['stalled_loop']['stall_ms']} ms): {b['stalled_loop']['stale_answers']} stale of "
        f"{b['stalled_loop']['samples']}, "
        f"{b['stalled_loop']['first_check_served_from_memory']} served from memory",
    ]
    c = doc.get("delayed_pushes")
    if c is not None and not c["served_from_memory"]:
        lines.append(
            f"(c) pushes delayed {c['push_delay_ms']} ms: every heartbeat came back later than "
            f"the lease ({c['lease_ms']} ms), so nothing was served from memory"
        )
    elif c is not None:
        lines.append(
            f"(c) pushes delayed {c['push_delay_ms']} ms: answers served from memory up to "
            f"{c['latest_stale_after_ack_ms']} ms after another client's acknowledged write "
            f"(lease {c['lease_ms']} ms; {c['trials_stale_beyond_lease']} of "
            f"{len(c['trials'])} trials beyond it)"
        )
    for detail in a["stale_details"][:3]:
        lines.append(f"    STALE at op {detail['op']}: {detail['call']} {detail['scope']}")
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=100_000, help="operations of part (a)")
    p.add_argument("--heartbeat-ms", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--samples", type=int, default=2000, help="latency samples of part (b)")
    p.add_argument("--stalled-samples", type=int, default=50)
    p.add_argument("--kill-every", type=int, default=2000, help="ops between tracking kills")
    p.add_argument("--stall-every", type=int, default=5000, help="ops between loop stalls")
    p.add_argument("--stall-ms", type=float, default=100.0)
    p.add_argument("--push-delay-ms", type=float, default=0.0, help="part (c); 0: skipped")
    p.add_argument("--delay-trials", type=int, default=10)
    p.add_argument("--skip-stress", action="store_true", help="leave out part (a)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    with RedisServer() as server:
        if args.skip_stress:
            args.ops = 0
        print(f"redis-server on {server.url}; (a) {args.ops:,} ops ...", flush=True)
        stress = asyncio.run(stress_run(server.url, args))
        print(f"(b) {args.samples:,} samples ...", flush=True)
        others = asyncio.run(other_clients_run(server.url, args))
        delayed = None
        if args.push_delay_ms > 0:
            print(f"(c) pushes delayed {args.push_delay_ms:g} ms ...", flush=True)
            delayed = asyncio.run(delayed_pushes_run(server.url, server.port, args))
        info = asyncio.run(_server_info(server.url))
    doc = {
        "command": "python3 scripts/measure_check_cache.py " + " ".join(sys.argv[1:]),
        "redis_server": info.get("redis_version"),
        "heartbeat_ms": args.heartbeat_ms,
        "seed": args.seed,
        "stress": stress,
        "other_clients": others,
        "delayed_pushes": delayed,
        "total_s": round(time.perf_counter() - started, 1),
    }
    for line in summary(doc):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 1 if stress["stale_answers"] or others["stalled_loop"]["stale_answers"] else 0


async def _server_info(url: str) -> dict[str, Any]:
    client = Redis.from_url(url, decode_responses=True)
    try:
        info: dict[str, Any] = await client.info("server")
        return info
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
