"""``budgetkit bench growth``: how throughput and memory change with what Redis holds.

Four series, in this order, on one Redis (a private redis-server unless ``--redis-url``),
bounded in time (about 4 minutes with the defaults on 2 cores):

- **ledger length**: debit throughput on a one-budget scope whose ledger holds 0, then each
  ``--ledger`` level of entries (default 100k, 1M; written by pipelines of the debit command:
  exactly the command ``BudgetKit.debit`` sends, recorded, with a new ledger id base each);
  bytes per ledger entry from the memory the last level added.
- **idempotency records**: ``--idempotency`` debits (default 100k) with unique idempotency keys
  on a fresh one-budget scope, through the API; bytes per record = their memory minus the
  ledger entries they also wrote; debit_batched throughput without and with unique keys.
- **budgets per scope** (1..6): check and debit_batched throughput and Redis CPU per operation.
- **stored budgets** (default 1k, 100k, 1M): budgets are added by pipelines of the create
  command (the one ``create_budget`` sends, recorded; organization, subject and budget id
  replaced), 100 per organization, each on its own user subject. After each level:
  ``used_memory`` and, on a fresh hot scope of 3 budgets, the throughput of check, debit
  (batching off) and debit_batched. Bytes per budget = the memory the level's fill added over
  the budgets it added.

The per-record series run first, on a small keyspace, so their figures do not include the
doubling of Redis's main hash table that the million budgets trigger (the budgets' figure does,
amortized). ``MEMORY USAGE`` of one record of each kind is reported beside the deltas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis_server import RedisServer, RedisServerError

from benchmarks.context import BenchContext, Settings
from benchmarks.measure import BenchError, Row, used_memory_bytes
from benchmarks.progress import Progress
from benchmarks.record import recorded_command
from benchmarks.report import load_average, machine_info, write_json
from benchmarks.workloads import (
    DEBIT_USD,
    HUGE_LIMIT_USD,
    OPS,
    batching_note,
    batching_of,
    create_scope_budgets,
    scope_of,
)
from budgetkit._core.client import BudgetKit
from budgetkit._core.ids import new_budget_id, new_ledger_id
from budgetkit._core.keys import Keyspace
from budgetkit._core.scope import Scope

DEFAULT_BUDGETS = [1_000, 100_000, 1_000_000]
DEFAULT_LEDGER = [100_000, 1_000_000]
DEFAULT_IDEMPOTENCY = 100_000
DEFAULT_DURATION_S = 3.0
DEFAULT_WARMUP_S = 0.5
DEFAULT_CONCURRENCY = 64
QUICK_BUDGETS = [1_000, 10_000]
QUICK_LEDGER = [5_000]
QUICK_IDEMPOTENCY = 5_000
QUICK_DURATION_S = 0.3
QUICK_WARMUP_S = 0.1
FILL_TASKS = 256
FILL_PIPELINES = 4
FILL_BATCH = 1000
TPL_ORG = "tplorg"
TPL_SUBJECT = "tplsubject"
BUDGET_ID = re.compile(r"bdgt_[0-9a-f]{32}")
LEDGER_BASE = re.compile(r"ledger_[0-9a-f]{30}")
REQUEST_ID = re.compile(r":rq:[0-9a-f]{30}")
BUDGETS_PER_ORG = 100
SCOPE_SIZES = [1, 2, 3, 4, 5, 6]
QUICK_SCOPE_SIZES = [1, 3, 6]
LEVEL_WORKLOADS = ("check", "debit", "debit_batched")
MEMORY_SETTLE_S = 0.2
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 for v in values) or values != sorted(values):
        raise argparse.ArgumentTypeError(f"expected ascending positive integers: {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="budgetkit bench growth", description=__doc__)
    add = p.add_argument
    add("--redis-url", help="use this Redis instead of starting a private server")
    add("--quick", action="store_true", help="small levels and short runs (a smoke test)")
    add("--budgets", type=_ints, help="stored-budget levels (1000,100000,1000000)")
    add("--ledger", type=_ints, help="ledger-length levels (100000,1000000)")
    add("--idempotency", type=int, help=f"idempotency records ({DEFAULT_IDEMPOTENCY})")
    add(
        "--duration", type=float, help=f"measured seconds per throughput run ({DEFAULT_DURATION_S})"
    )
    add("--warmup", type=float, help=f"unmeasured seconds before each ({DEFAULT_WARMUP_S})")
    add("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="tasks per throughput run")
    add("--scope-sizes", type=_ints, help="budgets per scope to compare (1..6; quick: 1,3,6)")
    add("--json", type=Path, help="write the results as JSON here (and .md beside it)")
    add("--plain", action="store_true", help="plain progress lines (no rich)")
    return p


@dataclass(slots=True)
class Growth:
    """The results, as they are measured."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=lambda: {"memory_usage_samples": {}})
    timings_s: dict[str, float] = field(default_factory=dict)

    def add(self, series: str, x: int, row: Row, **extra: Any) -> None:
        ops = row.ops or 1
        server_us = None if row.server_cpu_s is None else round(1e6 * row.server_cpu_s / ops, 1)
        self.rows.append(
            {"series": series, "x": x, **row.as_dict(), "server_us_per_op": server_us, **extra}
        )


class GrowthRun:
    """One growth run on one Redis under one key prefix."""

    def __init__(self, ctx: BenchContext, concurrency: int) -> None:
        self.ctx = ctx
        self.concurrency = concurrency
        self.result = Growth()
        self._hot = 0

    async def timed(self, title: str, step: Awaitable[None]) -> None:
        self.ctx.progress.step(title)
        started = time.perf_counter()
        await step
        self.result.timings_s[title] = round(time.perf_counter() - started, 1)

    async def memory(self) -> int:
        await asyncio.sleep(MEMORY_SETTLE_S)
        return await used_memory_bytes(self.ctx.admin)

    async def throughput(self, name: str, scope: Scope, **kit_options: Any) -> Row:
        """``name`` on one hot scope at the run's concurrency."""
        client = self.ctx.client(self.concurrency)
        try:
            kit = self.ctx.kit(client, batching_of(self.ctx, name))
            op = OPS[name](kit, scope)
            if kit_options.get("idempotent"):
                op = idempotent_debit_op(kit, scope)
            measurement = await self.ctx.measure([op] * self.concurrency)
            notes = batching_note(kit)
        finally:
            await client.aclose()
        size = len(list(scope.levels()))
        return measurement.row(name, self.concurrency, size, mode="hot", notes=notes)

    async def hot_scope(self, size: int) -> Scope:
        """A fresh scope of ``size`` budgets (its own organization, an empty ledger)."""
        self._hot += 1
        scope = scope_of(f"hot{self._hot}", size)
        async with self._kit(1) as kit:
            await create_scope_budgets(kit, scope)
        return scope

    @contextlib.asynccontextmanager
    async def _kit(self, connections: int) -> Any:
        client = self.ctx.client(connections)
        try:
            yield self.ctx.kit(client, batching=True)
        finally:
            await client.aclose()

    async def fill_budgets(self, start: int, stop: int) -> None:
        """Creates budgets ``start..stop-1`` (100 per organization, one per user subject)."""
        template = await recorded_command(
            self.ctx.prefix,
            lambda kit: kit.create_budget(TPL_ORG, "user", TPL_SUBJECT, "usd", HUGE_LIMIT_USD),
        )
        budget_id = _find(BUDGET_ID, template)
        request = _find(REQUEST_ID, template)

        def command(i: int) -> list[str]:
            org, subject, new_id = f"g{i // BUDGETS_PER_ORG}", f"u{i}", new_budget_id()
            new_request = _new_request_id()
            return [
                part.replace(budget_id, new_id)
                .replace(TPL_ORG, org)
                .replace(TPL_SUBJECT, subject)
                .replace(request, new_request)
                for part in template
            ]

        await self.pipelined("create", command, range(start, stop))

    async def fill_ledger(self, scope: Scope, count: int) -> None:
        """``count`` debits of ``scope`` (each with a new ledger id base)."""
        template = await recorded_command(
            self.ctx.prefix,
            lambda kit: kit.debit(scope, {"usd": DEBIT_USD}, meter_source="bench"),
        )
        base = _find(LEDGER_BASE, template)
        request = _find(REQUEST_ID, template)

        def command(_: int) -> list[str]:
            new_base = new_ledger_id()[: len(base)]
            new_request = _new_request_id()
            return [part.replace(base, new_base).replace(request, new_request) for part in template]

        await self.pipelined("debit", command, range(count))

    async def pipelined(
        self, operation: str, command: Callable[[int], list[str]], items: range
    ) -> None:
        """``command(i)`` for every i (commands of ``operation``, recorded: benchmarks.record):
        FILL_PIPELINES connections, FILL_BATCH per round trip. The operation's script (or
        function library) is registered on the server first, however the runtime does it."""
        client = self.ctx.client(FILL_PIPELINES)
        try:
            await self.ctx.kit(client)._runtime.ensure_loaded(operation)

            async def worker(indexes: range) -> None:
                for first in range(0, len(indexes), FILL_BATCH):
                    pipe = client.pipeline(transaction=False)
                    for i in indexes[first : first + FILL_BATCH]:
                        pipe.execute_command(*command(i))
                    await pipe.execute()

            parts = min(FILL_PIPELINES, len(items))
            await asyncio.gather(*(worker(items[k::FILL_PIPELINES]) for k in range(parts)))
        finally:
            await client.aclose()

    async def idempotent_debits(self, scope: Scope, count: int) -> str:
        """``count`` debits through the API, each with its own idempotency key; returns the
        record key of the first."""
        client = self.ctx.client(FILL_TASKS)
        try:
            kit = self.ctx.kit(client, batching=True)
            tag = secrets.token_hex(4)

            async def one(i: int) -> None:
                key = f"growth-{tag}-{i}"
                await kit.debit(scope, {"usd": DEBIT_USD}, idempotency_key=key)

            await _in_tasks(range(count), one)
            return kit.keys.idempotency(scope.organization_id, "debit", f"growth-{tag}-0")
        finally:
            await client.aclose()

    async def memory_usage(self, key: str) -> int | None:
        """``MEMORY USAGE key SAMPLES 0`` (every element counted), or None."""
        used: Any = await self.ctx.admin.memory_usage(key, samples=0)
        return None if used is None else int(used)

    @property
    def keys(self) -> Keyspace:
        return Keyspace(self.ctx.prefix)


async def _only_budget(run: GrowthRun, scope: Scope) -> str:
    """The id of the one budget of a one-level scope."""
    (level, subject), *_ = scope.levels()
    members = await run.ctx.admin.smembers(run.keys.subject(scope.organization_id, level, subject))
    return str(next(iter(members)))


def _new_request_id() -> str:
    """A fresh request record key suffix (``:rq:<30 hex>``) for a recorded command: the same
    request sent twice applies once (budgetkit._core.redelivery)."""
    return ":rq:" + secrets.token_hex(15)


def _find(pattern: re.Pattern[str], command: Sequence[str]) -> str:
    found = pattern.search(" ".join(command))
    if found is None:
        raise BenchError(f"no {pattern.pattern} in the recorded command")
    return found.group(0)


async def _in_tasks(items: range, call: Callable[[int], Awaitable[Any]]) -> None:
    """``call(i)`` for every i, from FILL_TASKS concurrent tasks (so calls share pipelines)."""
    chunks = [items[k::FILL_TASKS] for k in range(min(FILL_TASKS, len(items)))]

    async def worker(chunk: range) -> None:
        for i in chunk:
            await call(i)

    await asyncio.gather(*(worker(chunk) for chunk in chunks))


def idempotent_debit_op(kit: BudgetKit, scope: Scope) -> Callable[[], Awaitable[bool]]:
    tag = secrets.token_hex(4)
    counter = iter(range(10**12))

    async def op() -> bool:
        key = f"op-{tag}-{next(counter)}"
        await kit.debit(scope, {"usd": DEBIT_USD}, meter_source="bench", idempotency_key=key)
        return True

    return op


def _per(delta: int, count: int) -> float | None:
    return None if count <= 0 else round(delta / count, 1)


async def stored_budgets(run: GrowthRun, levels: Sequence[int], progress: Progress) -> None:
    stored = 0
    per_level = []
    for level in [0, *levels]:
        before = await run.memory()
        started = time.perf_counter()
        await run.fill_budgets(stored, level)
        fill_s = time.perf_counter() - started
        after = await run.memory()
        added, stored = level - stored, level
        per = _per(after - before, added)
        per_level.append(
            {
                "stored_budgets": level,
                "used_memory_bytes": after,
                "bytes_per_budget": per,
                "fill_s": round(fill_s, 1),
            }
        )
        if added:
            progress.line(
                f"stored {level:,} budgets: +{added:,} in {fill_s:.1f} s; {per} bytes each"
            )
        scope = await run.hot_scope(3)
        for name in LEVEL_WORKLOADS:
            row = await run.throughput(name, scope)
            run.result.add("stored_budgets", level, row, used_memory_bytes_after_fill=after)
            progress.row(row)
    run.result.memory["stored_budgets"] = per_level
    samples = run.result.memory["memory_usage_samples"]
    budget_key = await anext(run.ctx.admin.scan_iter(match=f"{run.keys.org('g0')}b:*"), None)
    samples["budget_hash"] = None if budget_key is None else await run.memory_usage(budget_key)
    samples["subject_set"] = await run.memory_usage(run.keys.subject("g0", "user", "u0"))
    org_index = await run.memory_usage(run.keys.org_index("g0"))
    samples["org_index_per_budget"] = None if org_index is None else org_index / BUDGETS_PER_ORG
    counted = [lv["bytes_per_budget"] for lv in per_level if lv["bytes_per_budget"] is not None]
    run.result.memory["bytes_per_budget"] = counted[-1] if counted else None


async def scope_sizes(run: GrowthRun, sizes: Sequence[int], progress: Progress) -> None:
    for size in sizes:
        scope = await run.hot_scope(size)
        for name in ("check", "debit_batched"):
            row = await run.throughput(name, scope)
            run.result.add("budgets_per_scope", size, row)
            progress.row(row)


async def ledger_length(run: GrowthRun, levels: Sequence[int], progress: Progress) -> None:
    scope = await run.hot_scope(1)
    row = await run.throughput("debit", scope)
    run.result.add("ledger_length", 0, row)
    progress.row(row)
    written, per_level = 0, []
    for level in levels:
        before = await run.memory()
        started = time.perf_counter()
        await run.fill_ledger(scope, level - written)
        write_s = time.perf_counter() - started
        after = await run.memory()
        per = _per(after - before, level - written)
        written = level
        per_level.append({"entries": level, "bytes_per_entry": per, "write_s": round(write_s, 1)})
        progress.line(f"ledger at {level:,} entries (+ in {write_s:.1f} s): {per} bytes each")
        row = await run.throughput("debit", scope)
        run.result.add("ledger_length", level, row)
        progress.row(row)
    run.result.memory["ledger"] = per_level
    ledger_key = run.keys.ledger(scope.organization_id, await _only_budget(run, scope))
    stream, length = await run.memory_usage(ledger_key), await run.ctx.admin.xlen(ledger_key)
    run.result.memory["memory_usage_samples"]["ledger_stream_per_entry"] = (
        None if stream is None else round(stream / max(1, length), 1)
    )
    run.result.memory["bytes_per_ledger_entry"] = per_level[-1]["bytes_per_entry"]


async def idempotency(run: GrowthRun, records: int, progress: Progress) -> None:
    scope = await run.hot_scope(1)
    before = await run.memory()
    record_key = await run.idempotent_debits(scope, records)
    after = await run.memory()
    run.result.memory["memory_usage_samples"]["idempotency_record"] = await run.memory_usage(
        record_key
    )
    ledger_bytes = run.result.memory.get("bytes_per_ledger_entry") or 0.0
    per = _per(after - before - round(ledger_bytes * records), records)
    run.result.memory["bytes_per_idempotency_record"] = per
    run.result.memory["idempotency"] = {"records": records, "bytes_with_ledger": after - before}
    progress.line(f"idempotency: {records:,} records; {per} bytes each (ledger entries excluded)")
    fresh = await run.hot_scope(1)
    for idempotent in (False, True):
        row = await run.throughput("debit_batched", fresh, idempotent=idempotent)
        row.notes = ("unique idempotency key per debit; " if idempotent else "no key; ") + row.notes
        run.result.add("idempotency_keys", int(idempotent), row)
        progress.row(row)


async def _growth(url: str, a: argparse.Namespace, progress: Progress) -> Growth:
    settings = Settings(warmup_s=a.warmup, duration_s=a.duration, spread=False)
    admin = Redis.from_url(url, decode_responses=True)
    try:
        ctx = BenchContext(url, admin, f"bkgrowth{secrets.token_hex(4)}", settings, progress)
        run = GrowthRun(ctx, a.concurrency)
        try:
            # Smallest keyspace first: the per-record figures then do not carry a doubling of
            # Redis's main hash table that the million budgets would trigger.
            await run.timed("ledger_length", ledger_length(run, a.ledger, progress))
            await run.timed("idempotency", idempotency(run, a.idempotency, progress))
            await run.timed("budgets_per_scope", scope_sizes(run, a.scope_sizes, progress))
            await run.timed("stored_budgets", stored_budgets(run, a.budgets, progress))
        finally:
            if a.redis_url:
                await ctx.cleanup()
        run.result.memory["machine"] = machine_info(await admin.info("server"))
        return run.result
    finally:
        await admin.aclose()


def _defaults(a: argparse.Namespace) -> None:
    a.budgets = a.budgets or (QUICK_BUDGETS if a.quick else DEFAULT_BUDGETS)
    a.ledger = a.ledger or (QUICK_LEDGER if a.quick else DEFAULT_LEDGER)
    a.idempotency = a.idempotency or (QUICK_IDEMPOTENCY if a.quick else DEFAULT_IDEMPOTENCY)
    a.duration = a.duration or (QUICK_DURATION_S if a.quick else DEFAULT_DURATION_S)
    a.scope_sizes = a.scope_sizes or (QUICK_SCOPE_SIZES if a.quick else SCOPE_SIZES)
    if a.warmup is None:
        a.warmup = QUICK_WARMUP_S if a.quick else DEFAULT_WARMUP_S


def document(result: Growth, command: str, machine: dict[str, Any]) -> dict[str, Any]:
    memory = dict(result.memory)
    machine = machine | memory.pop("machine", {})
    return {
        "command": command,
        "memory": memory,
        "rows": result.rows,
        "timings_s": result.timings_s,
        "machine": machine,
    }


def markdown(doc: dict[str, Any]) -> str:
    memory = doc["memory"]
    lines = ["# budgetkit cost growth", "", f"`{doc['command']}`", "", "## Memory", ""]
    lines.append(f"- bytes per budget: {memory.get('bytes_per_budget')}")
    lines.append(f"- bytes per ledger entry: {memory.get('bytes_per_ledger_entry')}")
    lines.append(f"- bytes per idempotency record: {memory.get('bytes_per_idempotency_record')}")
    samples = memory.get("memory_usage_samples", {})
    lines += [f"- MEMORY USAGE sample, {key}: {value}" for key, value in samples.items()]
    lines += [
        "",
        "| stored budgets | used_memory MiB | bytes per budget | fill s |",
        "|---|---|---|---|",
    ]
    for level in memory.get("stored_budgets", []):
        used = level["used_memory_bytes"] / 1024**2
        lines.append(
            f"| {level['stored_budgets']:,} | {used:.1f} | {level['bytes_per_budget']} | "
            f"{level['fill_s']} |"
        )
    lines += [
        "",
        "used_memory includes what the series run before left in Redis (the ledger and",
        "idempotency series, the hot scopes); bytes per budget are the fill's own delta.",
        "",
        "## Throughput",
        "",
    ]
    lines += [
        "| series | x | name | budgets | conc. | ops/s | p50 µs | p99 µs | Redis µs/op | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['series']} | {r['x']:,} | {r['name']} | {r['budgets_per_op']} | "
            f"{r['concurrency']} | {r['ops_per_s']:,.0f} | {r['p50_us']} | {r['p99_us']} | "
            f"{r['server_us_per_op']} | {r['notes']} |"
        )
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in doc["machine"].items()]
    lines += [f"- {key} (s): {value}" for key, value in doc["timings_s"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    a = parser().parse_args(list(argv))
    _defaults(a)
    command = shlex.join(["budgetkit", "bench", "growth", *argv])
    load_start = load_average()
    started = time.perf_counter()
    with Progress(plain=a.plain) as progress:
        try:
            with contextlib.ExitStack() as stack:
                url = a.redis_url or stack.enter_context(RedisServer()).url
                progress.step(f"Redis at {url}")
                result = asyncio.run(_growth(url, a, progress))
        except RedisServerError as error:
            progress.fail("bench growth", str(error))
            return EXIT_USAGE
        machine = {
            "total_s": round(time.perf_counter() - started, 1),
            "load_average_start": load_start,
            "load_average_end": load_average(),
        }
        doc = document(result, command, machine)
        if a.json:
            write_json(doc, a.json)
            a.json.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")
            progress.line(f"wrote {a.json} and {a.json.with_suffix('.md')}")
        progress.line(markdown(doc))
    return EXIT_OK
