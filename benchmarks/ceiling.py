"""``server_ceiling_debit``: redis-benchmark drives the debit script directly.

It sends the command BudgetKit.debit sends for a three-budget scope (recorded from a real call:
``FCALL`` of budgetkit's function library, or ``EVALSHA``, whichever the client sends; its keys
and arguments), from 50 connections with 16 commands pipelined per round trip: what the server
can do with no client-side work at all.
redis-benchmark does not count error replies, so the run is checked afterwards by how much the
org budget's balance went down.
"""

from __future__ import annotations

import asyncio
import csv
import resource
import shutil
import time
from urllib.parse import unquote, urlsplit

from benchmarks.context import BenchContext
from benchmarks.measure import BenchError, Row, server_cpu_s, used_memory_bytes
from benchmarks.record import SCRIPT_COMMANDS, recorded_command
from benchmarks.workloads import DEBIT_USD, HUGE_LIMIT_USD, create_scope_budgets, scope_of
from budgetkit._core.scope import Scope

CLIENTS = 50
PIPELINE = 16
SCOPE_SIZE = 3
TIMEOUT_S = 600.0
MS_TO_US = 1000.0


def skip_reason() -> str | None:
    if shutil.which("redis-benchmark") is None:
        return "redis-benchmark not found on PATH (Debian: apt-get install redis-tools)"
    return None


def target_args(url: str) -> list[str]:
    """redis-benchmark's connection options for a budgetkit URL; BenchError when unsupported."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return ["-s", parts.path]
    if parts.scheme != "redis":
        raise BenchError(f"redis-benchmark is not run against {parts.scheme}:// URLs")
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    if parts.username:
        args += ["--user", unquote(parts.username)]
    if parts.password:
        args += ["-a", unquote(parts.password)]
    db = parts.path.strip("/")
    if db and db != "0":
        args += ["--dbnum", db]
    return args


#: redis-benchmark's placeholder: a random 12-digit number per request and occurrence (``-r``).
RAND_PLACEHOLDER = "__rand_int__"
RAND_RANGE = 10**9  # redis-benchmark reads -r as a C int


async def debit_command(prefix: str, scope: Scope) -> list[str]:
    """The command BudgetKit.debit sends (``FCALL function numkeys keys... args...``, or
    ``EVALSHA``), with a random request record key per request: the same command sent twice
    applies once (budgetkit._core.redelivery), so every request must be a new one."""
    command = await recorded_command(
        prefix, lambda kit: kit.debit(scope, {"usd": DEBIT_USD}, meter_source="bench")
    )
    records = [i for i, arg in enumerate(command) if ":rq:" in arg]
    if len(records) != 1:
        raise BenchError(f"expected one request record key in the debit, found {len(records)}")
    key = command[records[0]]
    unique = RAND_PLACEHOLDER * 2  # two independent draws: 10**18 request ids
    command[records[0]] = key[: -len(unique)] + unique
    return command


def parse_csv(text: str) -> dict[str, float]:
    """rps, p50 and p99 (ms) of redis-benchmark's ``--csv`` output."""
    rows = list(csv.reader(text.splitlines()))
    header = next((r for r in rows if r and r[0] == "test"), None)
    data = next((r for r in rows if r and r[0].split(" ", 1)[0].upper() in SCRIPT_COMMANDS), None)
    if header is None or data is None:
        raise BenchError(f"unexpected redis-benchmark output: {text[-300:]!r}")
    return {name: float(value) for name, value in zip(header[1:], data[1:], strict=False)}


async def run_tool(argv: list[str]) -> str:
    """Runs redis-benchmark (``argv``); its stdout, or BenchError on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise BenchError(f"redis-benchmark exited {proc.returncode}: {err.decode()[-300:]}")
    return out.decode()


async def server_ceiling_debit(ctx: BenchContext, requests: int) -> Row:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise BenchError("redis-benchmark not found on PATH")
    argv = [binary, *target_args(ctx.url), "-c", str(CLIENTS), "-P", str(PIPELINE)]
    argv += ["-r", str(RAND_RANGE)]
    client = ctx.client(1)
    try:
        kit = ctx.kit(client)
        scope = scope_of("org_ceiling", SCOPE_SIZE)
        org_budget = (await create_scope_budgets(kit, scope))[0]
        command = await debit_command(ctx.prefix, scope)
        await kit.debit(scope, {"usd": DEBIT_USD}, meter_source="bench")  # loads it on the server
        server_before = await server_cpu_s(ctx.admin)
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        stats = parse_csv(await run_tool([*argv, "-n", str(requests), "--csv", *command]))
        wall_s = time.perf_counter() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = await server_cpu_s(ctx.admin) - server_before
        balance = (await kit.get_budget(scope.organization_id, org_budget)).balance
    finally:
        await client.aclose()
    applied = round((HUGE_LIMIT_USD - balance) / DEBIT_USD) - 1
    if applied < requests:
        raise BenchError(f"only {applied} of {requests} debits applied (error replies?)")
    cpu = (children.ru_utime - children_before.ru_utime) + (
        children.ru_stime - children_before.ru_stime
    )
    return Row(
        name="server_ceiling_debit",
        concurrency=CLIENTS,
        budgets_per_op=SCOPE_SIZE,
        ops_per_s=stats["rps"],
        p50_us=round(stats["p50_latency_ms"] * MS_TO_US, 1),
        p99_us=round(stats["p99_latency_ms"] * MS_TO_US, 1),
        p999_us=None,
        ops=requests,
        duration_s=round(wall_s, 3),
        client_cpu_s=round(cpu, 3),
        server_cpu_s=round(server_cpu, 3),
        used_memory_bytes=await used_memory_bytes(ctx.admin),
        mode="-",
        notes=(
            f"redis-benchmark -c {CLIENTS} -P {PIPELINE}, {requests} debits, all applied; "
            "latency per pipelined request (no p99.9 from redis-benchmark); "
            "client CPU is redis-benchmark's"
        ),
    )
