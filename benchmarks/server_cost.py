"""``server_cost``: what each script command costs Redis itself, next to a lean reference script.

For each command as BudgetKit sends it (recorded, benchmarks.record: ``FCALL`` / ``FCALL_RO`` of
its Functions library, or ``EVALSHA``, whichever the client sends) — check of 3 budgets, debit
of 3 and of 1 budget, reserve and commit of 3 — plus ``reference_debit`` (the lean debit of
issue 14, REFERENCE_SCRIPT: 3 HMGET of the balance fields, an admission loop, 3 HINCRBY, 1 XADD)
and ``noop`` (``EVALSHA`` of ``return 1``): ``CONFIG RESETSTAT``, then N requests, then
``INFO commandstats``. Each command is measured in its own reset window, so the
``cmdstat_<command>`` of the command it actually is (``cmdstat_fcall``, ``cmdstat_fcall_ro``,
``cmdstat_evalsha``) holds that command's calls only; ``usec_per_call`` is its ``usec / calls``:
Redis's own time executing the command (Lua and the commands the script calls), without
networking, parsing or the driver. A few unmeasured calls come first (script or library
loading, first writes).

Drivers: redis-benchmark (RB_CLIENTS connections, RB_PIPELINE commands pipelined) for the
commands whose per-request novelty is a random request id (``__rand_int__``, as in
benchmarks.ceiling: a command sent twice applies once); a pipelined Python client for reserve
(a new hold id in both its key and its argument per request: redis-benchmark draws each
placeholder independently) and commit (a fresh hold per request: N holds are reserved first,
through the recorded reserve command, then committed one each), and for every command when
redis-benchmark is missing or cannot reach the URL. The driver does not change
``usec_per_call``, which counts only the time inside the command.

Memory (``MEMORY USAGE key SAMPLES 0``, every element counted), after the windows: bytes per
budget (the 3-budget debit's budget hashes, averaged), bytes per ledger entry (every stream of
its organization but the events stream: their memory over their entries) and one request record
(a mutation also leaves one, for the redelivery window: not a ledger entry, not counted there);
the same for the reference script's hashes and stream.
"""

from __future__ import annotations

import random
import resource
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from benchmarks.ceiling import RAND_PLACEHOLDER, RAND_RANGE, parse_csv, run_tool, target_args
from benchmarks.context import BenchContext
from benchmarks.measure import BenchError, Row, server_cpu_s, used_memory_bytes
from benchmarks.record import recorded_command
from benchmarks.workloads import DEBIT_USD, create_scope_budgets, scope_of
from budgetkit._core.client import BudgetKit
from budgetkit._core.ids import new_hold_id, new_ledger_id
from budgetkit._core.keys import Keyspace
from budgetkit._core.scope import Scope

ROW_PREFIX = "server_cost_"
REFERENCE = "reference_debit"
NOOP = "noop"
RB_CLIENTS = 4
RB_PIPELINE = 32
PY_PIPELINE = 128
WARMUP_CALLS = 32
SLICES = 5
HOLD_TTL_S = 3600
RAND_DIGITS = len(RAND_PLACEHOLDER)
REF_BALANCE_MICROS = 10**15
REF_DEBIT_MICROS = 1000
REF_BUDGETS = 3
LEDGER_BASE_LEN = len("ledger_") + 30
HOLD_ID_LEN = len("hold_") + 32
USEC_DIGITS = 3

#: The lean reference debit of issue 14 (what a 3-budget debit costs Redis at the least): read
#: the balance fields of each budget, admit or deny, move the balances, append one ledger entry.
REFERENCE_SCRIPT = """
-- KEYS[1..n-1] budget hashes (bal, held, lim, status), KEYS[n] ledger stream
-- ARGV[1] amount micros, ARGV[2] ledger entry id, ARGV[3] meter source
local amount = tonumber(ARGV[1])
local n = #KEYS - 1
for i = 1, n do
  local f = redis.call('HMGET', KEYS[i], 'bal', 'held', 'status')
  local bal, held = tonumber(f[1]), tonumber(f[2])
  if bal == nil or held == nil then return redis.error_reply('REF_CORRUPT ' .. KEYS[i]) end
  if f[3] ~= 'active' or amount > bal - held then return {0, i} end
end
local out = {1}
for i = 1, n do out[i + 1] = redis.call('HINCRBY', KEYS[i], 'bal', -amount) end
redis.call('XADD', KEYS[n + 1], '*', 'id', ARGV[2], 'amt', ARGV[1], 'src', ARGV[3])
return out
"""
NOOP_SCRIPT = "return 1"


@dataclass(frozen=True, slots=True)
class Spec:
    """One measured command: its row name (after ROW_PREFIX), budgets, and what it is."""

    name: str
    budgets: int
    about: str


SPECS = (
    Spec("check", 3, "check of a 3-budget scope"),
    Spec("debit", 3, "debit of a 3-budget scope"),
    Spec("debit", 1, "debit of a 1-budget scope"),
    Spec("reserve", 3, "reserve of a 3-budget scope, a new hold each"),
    Spec("commit", 3, "commit of a 3-budget scope, one reserved hold each"),
    Spec(REFERENCE, REF_BUDGETS, "lean reference: 3 HMGET, admission loop, 3 HINCRBY, 1 XADD"),
    Spec(NOOP, 0, "EVALSHA of `return 1`"),
)

#: Targets of issue 14: usec_per_call of the command (3 budgets) / the reference's, at most.
TARGETS = {"debit": 3.0, "check": 2.0, "reserve": 3.5, "commit": 3.5}
TARGET_BUDGETS = 3
#: Redis memory per ledger entry, at most (bytes).
LEDGER_ENTRY_BYTES_TARGET = 150.0


def row_name(spec_name: str) -> str:
    return ROW_PREFIX + spec_name


# -- commands ---------------------------------------------------------------------------------


def _request_id(command: Sequence[str]) -> str:
    """The request id of a mutation's per-call request record (``…:rq:<id>``)."""
    records = [arg for arg in command if ":rq:" in arg]
    if len(records) != 1:
        raise BenchError(f"expected one request record key, found {len(records)}")
    return records[0].rsplit(":rq:", 1)[1]


def _hold_id(command: Sequence[str]) -> str:
    """The hold id a reserve or commit sends as an argument (``hold_<32 hex>``)."""
    found = {arg for arg in command if arg.startswith("hold_") and len(arg) == HOLD_ID_LEN}
    if len(found) != 1:
        raise BenchError(f"expected one hold id in the command, found {sorted(found)}")
    return found.pop()


def randomized(command: Sequence[str]) -> list[str]:
    """The command with its request id's last 24 characters replaced by two redis-benchmark
    placeholders wherever the id occurs (the record key, the ledger id base): every request a
    new one. A command without a request record (check) is returned as it is."""
    if not any(":rq:" in arg for arg in command):
        return list(command)
    request_id = _request_id(command)
    unique = RAND_PLACEHOLDER * 2
    fresh = request_id[: -len(unique)] + unique
    return [arg.replace(request_id, fresh) for arg in command]


def _draw(template: Sequence[str], rng: random.Random) -> list[str]:
    """One request of a redis-benchmark template: each placeholder a new random number."""
    out = []
    for arg in template:
        while RAND_PLACEHOLDER in arg:
            digits = f"{rng.randrange(RAND_RANGE):0{RAND_DIGITS}d}"
            arg = arg.replace(RAND_PLACEHOLDER, digits, 1)
        out.append(arg)
    return out


def _substituted(template: Sequence[str], old: Sequence[str], new: Sequence[str]) -> list[str]:
    out = list(template)
    for i, arg in enumerate(out):
        for before, after in zip(old, new, strict=True):
            if before in arg:
                arg = arg.replace(before, after)
        out[i] = arg
    return out


def _fresh_request_id() -> str:
    return new_ledger_id()[len("ledger_") : LEDGER_BASE_LEN]


# -- drivers ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Drive:
    """How N requests were sent and how long it took."""

    driver: str
    connections: int
    wall_s: float
    client_cpu_s: float | None
    server_cpu_s: float


def benchmark_argv(url: str) -> list[str] | None:
    """redis-benchmark's command line for ``url``, or None (missing, or a URL it cannot use)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    try:
        target = target_args(url)
    except BenchError:
        return None
    return [binary, *target, "-c", str(RB_CLIENTS), "-P", str(RB_PIPELINE)]


async def _drive_benchmark(
    ctx: BenchContext, argv: list[str], template: list[str], requests: int
) -> Drive:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = await server_cpu_s(ctx.admin)
    started = time.perf_counter()
    out = await run_tool([*argv, "-r", str(RAND_RANGE), "-n", str(requests), "--csv", *template])
    wall_s = time.perf_counter() - started
    server = await server_cpu_s(ctx.admin) - server_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    parse_csv(out)  # a run that printed no result line is an error
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Drive("redis-benchmark", RB_CLIENTS, wall_s, cpu, server)


async def send_pipelined(client: Redis, commands: Sequence[Sequence[str]]) -> int:
    """Sends ``commands`` in pipelines of PY_PIPELINE; returns how many replies were errors."""
    errors = 0
    for start in range(0, len(commands), PY_PIPELINE):
        pipe = client.pipeline(transaction=False)
        for command in commands[start : start + PY_PIPELINE]:
            pipe.execute_command(*command)
        replies = await pipe.execute(raise_on_error=False)
        errors += sum(isinstance(reply, Exception) for reply in replies)
    return errors


async def _drive_python(ctx: BenchContext, client: Redis, commands: list[list[str]]) -> Drive:
    server_before = await server_cpu_s(ctx.admin)
    cpu_before, started = time.process_time(), time.perf_counter()
    errors = await send_pipelined(client, commands)
    wall_s = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    server = await server_cpu_s(ctx.admin) - server_before
    if errors:
        raise BenchError(f"{errors} of {len(commands)} commands returned errors")
    return Drive(f"python pipelines of {PY_PIPELINE}", 1, wall_s, cpu, server)


# -- one command ------------------------------------------------------------------------------


@dataclass(slots=True)
class Prepared:
    """What a command's run sends: a template (redis-benchmark placeholders) or a list."""

    template: list[str] | None
    commands: list[list[str]] | None
    warmup: list[list[str]]
    memory: MemoryProbe | None = None


async def _prepare_scope_command(
    ctx: BenchContext, client: Redis, spec: Spec, requests: int
) -> Prepared:
    kit = ctx.kit(client, batching=False)
    scope = scope_of(f"org_cost_{spec.name}_{spec.budgets}", spec.budgets)
    budget_ids = await create_scope_budgets(kit, scope)
    rng = random.Random(0)
    amounts = {"usd": DEBIT_USD}
    if spec.name == "check":
        await kit.check(scope)  # loads the script
        command = await recorded_command(ctx.prefix, lambda k: k.check(scope))
        return Prepared(command, None, [command] * WARMUP_CALLS)
    if spec.name == "debit":
        await kit.debit(scope, amounts, meter_source="bench")
        command = await recorded_command(
            ctx.prefix, lambda k: k.debit(scope, amounts, meter_source="bench")
        )
        template = randomized(command)
        warmup = [_draw(template, rng) for _ in range(WARMUP_CALLS)]
        memory = None
        if spec.budgets == TARGET_BUDGETS:
            memory = _scope_memory(ctx, scope, budget_ids)
        return Prepared(template, None, warmup, memory)
    reserves = await _reserve_commands(ctx, kit, scope, requests + WARMUP_CALLS)
    if spec.name == "reserve":
        return Prepared(None, reserves[WARMUP_CALLS:], reserves[:WARMUP_CALLS])
    if spec.name == "commit":
        errors = await send_pipelined(client, reserves)  # the holds to commit, one per request
        if errors:
            raise BenchError(f"{errors} of {len(reserves)} reserves failed")
        hold_ids = [_hold_id(command) for command in reserves]
        commits = await _commit_commands(ctx, kit, scope, hold_ids)
        return Prepared(None, commits[WARMUP_CALLS:], commits[:WARMUP_CALLS])
    raise BenchError(f"unknown server_cost command {spec.name}")


async def _reserve_commands(
    ctx: BenchContext, kit: BudgetKit, scope: Scope, count: int
) -> list[list[str]]:
    """``count`` reserve commands as BudgetKit.reserve sends them, each with a new hold id and
    request id (in their keys and arguments alike)."""
    amounts = {"usd": DEBIT_USD}
    hold = await kit.reserve(scope, amounts, ttl_seconds=HOLD_TTL_S)  # loads the script
    if not hold.granted:
        raise BenchError(f"reserve denied: {hold.check}")
    command = await recorded_command(
        ctx.prefix, lambda k: k.reserve(scope, amounts, ttl_seconds=HOLD_TTL_S)
    )
    old = [_hold_id(command), _request_id(command)]
    return [_substituted(command, old, [new_hold_id(), _fresh_request_id()]) for _ in range(count)]


async def _commit_commands(
    ctx: BenchContext, kit: BudgetKit, scope: Scope, hold_ids: Sequence[str]
) -> list[list[str]]:
    """A commit command (as BudgetKit.commit sends it) of each hold, each a new request."""
    amounts = {"usd": DEBIT_USD}
    hold = await kit.reserve(scope, amounts, ttl_seconds=HOLD_TTL_S)
    await kit.commit(hold, amounts, meter_source="bench")  # loads the script
    recorded_hold = new_hold_id()
    command = await recorded_command(
        ctx.prefix,
        lambda k: k.commit(recorded_hold, amounts, meter_source="bench", scope=scope),
    )
    old = [recorded_hold, _request_id(command)]
    return [_substituted(command, old, [h, _fresh_request_id()]) for h in hold_ids]


async def _prepare_script(ctx: BenchContext, client: Redis, spec: Spec) -> Prepared:
    if spec.name == NOOP:
        sha = str(await client.script_load(NOOP_SCRIPT))
        command = ["EVALSHA", sha, "0"]
        return Prepared(command, None, [command] * WARMUP_CALLS)
    sha = str(await client.script_load(REFERENCE_SCRIPT))
    hashes = [ctx.key("ref", "b", str(i)) for i in range(REF_BUDGETS)]
    stream = ctx.key("ref", "l")
    balance = str(REF_BALANCE_MICROS)
    fields = ["bal", balance, "held", "0", "lim", balance, "status", "active"]
    for key in hashes:
        await client.hset(key, items=fields)
    entry_id = "ledger_" + "0" * (LEDGER_BASE_LEN - len("ledger_") - 2 * RAND_DIGITS)
    entry_id += RAND_PLACEHOLDER * 2 + "00"
    template = ["EVALSHA", sha, str(len(hashes) + 1), *hashes, stream]
    template += [str(REF_DEBIT_MICROS), entry_id, "bench"]
    rng = random.Random(0)

    async def streams() -> list[str]:
        return [stream]

    memory = MemoryProbe(ctx.admin, hashes, streams)
    return Prepared(template, None, [_draw(template, rng) for _ in range(WARMUP_CALLS)], memory)


def _stat_name(command: Sequence[str]) -> str:
    return f"cmdstat_{command[0].lower()}"


async def _command_stats(admin: Redis, stat: str) -> dict[str, Any]:
    info: dict[str, Any] = await admin.info("commandstats")
    found = info.get(stat)
    if not isinstance(found, dict):
        raise BenchError(f"INFO commandstats has no {stat}")
    return found


@dataclass(slots=True)
class Window:
    """One reset window of one command: what commandstats counted, and how it was driven."""

    calls: int
    usec: float
    drive: Drive

    @property
    def usec_per_call(self) -> float:
        return self.usec / self.calls


@dataclass(slots=True)
class Measured:
    """One command of a run: how to send it, and its windows so far."""

    spec: Spec
    prepared: Prepared
    stat: str
    sent: int = 0
    windows: list[Window] = field(default_factory=list)

    def next_commands(self, count: int, rng: random.Random) -> list[list[str]]:
        """The next ``count`` requests as commands (the Python driver)."""
        prepared = self.prepared
        if prepared.commands is not None:
            out = prepared.commands[self.sent : self.sent + count]
        else:
            out = [_draw(prepared.template or [], rng) for _ in range(count)]
        self.sent += count
        return out


async def _prepare(ctx: BenchContext, client: Redis, spec: Spec, requests: int) -> Measured:
    if spec.name in (REFERENCE, NOOP):
        prepared = await _prepare_script(ctx, client, spec)
    else:
        prepared = await _prepare_scope_command(ctx, client, spec, requests)
    errors = await send_pipelined(client, prepared.warmup)
    if errors:
        raise BenchError(f"{spec.name}: {errors} of {len(prepared.warmup)} warm-up calls failed")
    first = prepared.template or (prepared.commands or [["EVALSHA"]])[0]
    return Measured(spec, prepared, _stat_name(first))


async def _window(
    ctx: BenchContext, client: Redis, one: Measured, count: int, rng: random.Random
) -> None:
    """``count`` requests of one command in a fresh commandstats window (CONFIG RESETSTAT)."""
    prepared = one.prepared
    argv = benchmark_argv(ctx.url) if prepared.template is not None else None
    commands = None if argv is not None else one.next_commands(count, rng)
    await ctx.admin.config_resetstat()
    if argv is not None and prepared.template is not None:
        drive = await _drive_benchmark(ctx, argv, prepared.template, count)
    else:
        drive = await _drive_python(ctx, client, commands or [])
    stats = await _command_stats(ctx.admin, one.stat)
    calls, usec = int(stats["calls"]), float(stats["usec"])
    failed = int(stats.get("failed_calls", 0)) + int(stats.get("rejected_calls", 0))
    if calls < count or failed:  # redis-benchmark may send up to a pipeline more
        raise BenchError(f"{one.spec.name}: {calls} calls of {count} counted, {failed} failed")
    one.windows.append(Window(calls, usec, drive))


def slice_sizes(requests: int, slices: int) -> list[int]:
    """``requests`` split into ``slices`` windows (fewer when there are fewer requests)."""
    count = max(1, min(slices, requests))
    return [requests // count + (1 if i < requests % count else 0) for i in range(count)]


async def measure_all(ctx: BenchContext, requests: int, slices: int = SLICES) -> list[Row]:
    """A row per command of SPECS: ``requests`` each, in ``slices`` windows per command taken
    in turn (every command's first window, then every command's second, ...), so a burst of
    load on a shared machine lands on a window of several commands rather than all of one;
    a row's ``usec_per_call`` is the median of its windows'."""
    client = ctx.client(1)
    rng = random.Random(1)
    try:
        measured = [await _prepare(ctx, client, spec, requests) for spec in SPECS]
        for count in slice_sizes(requests, slices):
            for one in measured:
                await _window(ctx, client, one, count, rng)
        metrics = [
            await one.prepared.memory.finish() if one.prepared.memory is not None else {}
            for one in measured
        ]
    finally:
        await client.aclose()
    used = await used_memory_bytes(ctx.admin)
    return [_row(one, figures, used) for one, figures in zip(measured, metrics, strict=True)]


def _row(one: Measured, metrics: dict[str, float | None], used_memory: int) -> Row:
    windows = one.windows
    calls = sum(w.calls for w in windows)
    wall_s = sum(w.drive.wall_s for w in windows)
    server_s = sum(w.drive.server_cpu_s for w in windows)
    client_s = [w.drive.client_cpu_s for w in windows if w.drive.client_cpu_s is not None]
    per_window = [w.usec_per_call for w in windows]
    metrics = {"server_cpu_us_per_call": round(server_s * 1e6 / calls, 2), **metrics}
    drive = windows[0].drive
    spread = f"{min(per_window):.2f}..{max(per_window):.2f}"
    return Row(
        name=row_name(one.spec.name),
        concurrency=drive.connections,
        budgets_per_op=one.spec.budgets,
        ops_per_s=round(calls / wall_s, 1) if wall_s > 0 else 0.0,
        p50_us=None,
        p99_us=None,
        p999_us=None,
        ops=calls,
        duration_s=round(wall_s, 3),
        client_cpu_s=round(sum(client_s), 3) if client_s else None,
        server_cpu_s=round(server_s, 3),
        used_memory_bytes=used_memory,
        mode="-",
        usec_per_call=round(statistics.median(per_window), USEC_DIGITS),
        calls=calls,
        metrics=metrics,
        notes=f"{one.spec.about}; {drive.driver}; INFO commandstats {one.stat} usec / calls, "
        f"median of "
        f"{len(windows)} windows ({spread} µs)",
    )


# -- memory -----------------------------------------------------------------------------------


async def _memory_usage(admin: Redis, key: str) -> int | None:
    used: Any = await admin.memory_usage(key, samples=0)
    return None if used is None else int(used)


def _mean(values: Sequence[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 1) if present else None


async def _stream_totals(admin: Redis, streams: Sequence[str]) -> tuple[int, int]:
    """(MEMORY USAGE, entries) summed over ``streams``."""
    total_bytes, total_entries = 0, 0
    for key in streams:
        used = await _memory_usage(admin, key)
        if used is not None:
            total_bytes += used
            total_entries += int(await admin.xlen(key))
    return total_bytes, total_entries


def _per(amount: float, count: int) -> float | None:
    return round(amount / count, 1) if count > 0 else None


@dataclass(slots=True)
class MemoryProbe:
    """Memory figures after a command's windows: its budget hashes and its ledger streams (and
    one request record: a mutation leaves one for the redelivery window)."""

    admin: Redis
    budget_keys: list[str]
    streams: Callable[[], Awaitable[list[str]]]
    request_pattern: str | None = None

    async def finish(self) -> dict[str, float | None]:
        stream_bytes, entries = await _stream_totals(self.admin, await self.streams())
        hashes = [await _memory_usage(self.admin, key) for key in self.budget_keys]
        out = {
            "bytes_per_budget": _mean(hashes),
            "bytes_per_ledger_entry": _per(stream_bytes, entries),
            "ledger_entries": float(entries),
        }
        if self.request_pattern is not None:
            async for key in self.admin.scan_iter(match=self.request_pattern, count=1000):
                out["bytes_per_request_record"] = await _memory_usage(self.admin, key)
                break
        return out


def _scope_memory(ctx: BenchContext, scope: Scope, budget_ids: Sequence[str]) -> MemoryProbe:
    keys = Keyspace(ctx.prefix)
    org = scope.organization_id
    admin = ctx.admin

    async def streams() -> list[str]:
        """Every stream of the organization but its events: the ledger, whatever its layout."""
        events = keys.events(org)
        pattern = f"{keys.org(org)}*"
        found = admin.scan_iter(match=pattern, count=1000, _type="stream")
        return sorted([key async for key in found if key != events])

    hashes = [keys.budget(org, b) for b in budget_ids]
    return MemoryProbe(admin, hashes, streams, keys.request(org, "*"))
