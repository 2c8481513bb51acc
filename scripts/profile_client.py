"""Client-side Python CPU per call of budgetkit's hot path, at a given concurrency.

Usage::

    python3 scripts/profile_client.py [--ops debit,check,...] [--calls 6000] [--tasks 64]
                                      [--runs 3] [--cprofile OP] [--url redis://...]
    python3 scripts/profile_client.py --baseline DIR [--rounds 9] [--ops ...] [--calls 3000]

Starts a private redis-server (scripts/redis_server.py; or uses ``--url``, whose db is flushed),
creates a 3-budget scope (session, user, org; usd limits large enough never to stop) and, for
each operation, runs ``--calls`` calls spread over ``--tasks`` concurrent asyncio tasks through
``BudgetKit.from_url(url, batching=False)``. It measures this process's CPU time
(``time.process_time``) over the calls and prints the client CPU per call in µs — the Redis
server runs in another process, so its CPU is not counted. Each operation is measured ``--runs``
times, interleaved; the JSON printed holds every run and the median.

``--baseline DIR``: an A/B comparison with another checkout (e.g. ``git worktree add /tmp/base
HEAD``): two worker processes, one importing budgetkit from DIR and one from this checkout, take
turns (alternating which goes first) on the same server, ``--rounds`` rounds per operation, so
that the machine's drift hits both alike; prints each side's median and the median of the
paired differences. A shared machine's noise easily moves one run by 30 %: compare paired runs.

``bare_check`` is the floor: the very command a check sends (EVALSHA or FCALL, as the script
runtime builds it; captured from one check) sent again with redis-py's ``execute_command``, no
budgetkit code around it. ``--cprofile OP`` runs one more round of OP under cProfile and prints
the 30 costliest functions (by own time) to stderr.

Operations: bare_check, check, check_tool, debit, debit_idem (with an idempotency key),
record_usage, reserve_commit and reserve_release (per pair: two calls), spend (a guard that
records once: reserve + commit). Per-call figures of the pairs are per script call.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_server import RedisServer

import budgetkit as bk

ROOT = Path(__file__).resolve().parent.parent
ORG = "org_profile"
SCOPE = bk.Scope(organization_id=ORG, session_id="sess_1", user_id="usr_1")
OPS = (
    "bare_check",
    "check",
    "check_tool",
    "debit",
    "debit_idem",
    "record_usage",
    "reserve_commit",
    "reserve_release",
    "spend",
)
DEFAULT_OPS = "bare_check,check,check_tool,debit"
#: Script calls per operation (a reserve + commit pair is two).
CALLS_PER_OP = {"reserve_commit": 2, "reserve_release": 2, "spend": 2}
USAGE = bk.LlmUsage(model="gpt-4.1", provider="openai", input_tokens=100, output_tokens=20)

Call = Callable[[int], Awaitable[Any]]


async def _operation(kit: bk.BudgetKit, name: str) -> Call:
    """One call of operation ``name`` (``i``: a number unique within the process)."""
    if name == "bare_check":
        return await _bare_check(kit)
    amounts = {"usd": 0.000001}
    keys = f"k{os.getpid()}-"  # idempotency keys no other process uses

    async def call(i: int) -> Any:
        if name == "check":
            return await kit.check(SCOPE)
        if name == "check_tool":
            return await kit.check_tool(SCOPE)
        if name == "debit":
            return await kit.debit(SCOPE, amounts, ref_id="gen_1")
        if name == "debit_idem":
            return await kit.debit(SCOPE, amounts, idempotency_key=f"{keys}{i}")
        if name == "record_usage":
            return await kit.record_usage(SCOPE, USAGE, currencies=("usd",))
        if name in ("reserve_commit", "reserve_release"):
            hold = await kit.reserve(SCOPE, amounts)
            if name == "reserve_commit":
                return await kit.commit(hold, amounts)
            return await kit.release(hold)
        async with kit.spend(SCOPE, amounts) as guard:
            await guard.record(amounts)
        return guard.result

    return call


async def _bare_check(kit: bk.BudgetKit) -> Call:
    """The command of one check, captured and then sent through redis-py alone."""
    redis: Any = kit.redis
    sent: list[tuple[Any, ...]] = []
    send = redis.execute_command

    async def capture(*args: Any, **options: Any) -> Any:
        sent.append(args)
        return await send(*args, **options)

    redis.execute_command = capture
    try:
        await kit.check(SCOPE)
    finally:
        del redis.execute_command  # the class's method again
    command = sent[-1]

    async def call(i: int) -> Any:
        return await send(*command)

    return call


async def _round(call: Call, calls: int, tasks: int, counter: itertools.count[int]) -> float:
    """Client CPU µs per call of ``calls`` calls over ``tasks`` concurrent tasks."""

    async def worker(share: int) -> None:
        for _ in range(share):
            await call(next(counter))

    shares = [calls // tasks + (1 if t < calls % tasks else 0) for t in range(tasks)]
    start = time.process_time()
    await asyncio.gather(*(worker(share) for share in shares))
    return (time.process_time() - start) / calls * 1e6


async def _create_budgets(url: str) -> None:
    async with bk.BudgetKit.from_url(url, batching=False) as kit:
        await kit.redis.flushdb()
        for subject_type, subject_id in (("session", "sess_1"), ("user", "usr_1"), ("org", ORG)):
            await kit.create_budget(ORG, subject_type, subject_id, "usd", 1_000_000)


class _Measurer:
    """Measures operations on one kit; each operation is warmed up before its first round."""

    def __init__(self, kit: bk.BudgetKit, tasks: int) -> None:
        self.kit, self.tasks = kit, tasks
        self.counter = itertools.count()
        self.calls: dict[str, Call] = {}

    async def per_call_us(self, op: str, calls: int) -> float:
        """Client CPU µs per script call of ``calls`` script calls of ``op``."""
        call = self.calls.get(op)
        if call is None:  # connections, script loads, caches
            call = self.calls[op] = await _operation(self.kit, op)
            await _round(call, self.tasks * 4, self.tasks, self.counter)
        pairs = CALLS_PER_OP.get(op, 1)
        return await _round(call, calls // pairs, self.tasks, self.counter) / pairs


async def measure(url: str, ops: list[str], calls: int, tasks: int, runs: int) -> dict[str, Any]:
    await _create_budgets(url)
    async with bk.BudgetKit.from_url(url, batching=False) as kit:
        measurer = _Measurer(kit, tasks)
        for op in ops:
            await measurer.per_call_us(op, tasks)  # warm up every operation first
        per_call: dict[str, list[float]] = {op: [] for op in ops}
        for _ in range(runs):
            for op in ops:
                per_call[op].append(round(await measurer.per_call_us(op, calls), 1))
    return {
        op: {"median_us_per_call": statistics.median(values), "runs_us": values}
        for op, values in per_call.items()
    }


def serve(url: str, tasks: int) -> None:
    """A/B worker: reads ``op calls`` lines from stdin, answers each with the µs per call."""
    loop = asyncio.new_event_loop()
    kit = bk.BudgetKit.from_url(url, batching=False)
    measurer = _Measurer(kit, tasks)
    try:
        for line in sys.stdin:
            op, calls = line.split()
            us = loop.run_until_complete(measurer.per_call_us(op, int(calls)))
            print(f"{us:.2f}", flush=True)
    finally:
        loop.run_until_complete(kit.aclose())
        loop.close()


def _worker(checkout: Path, url: str, tasks: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, __file__, "--serve", "--url", url, "--tasks", str(tasks)]
    return subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _ask(worker: subprocess.Popen[str], op: str, calls: int) -> float:
    stdin, stdout = worker.stdin, worker.stdout
    assert stdin is not None and stdout is not None
    stdin.write(f"{op} {calls}\n")
    stdin.flush()
    answer = stdout.readline()
    if not answer:
        raise RuntimeError(f"the worker of {op} exited (code {worker.wait()})")
    return float(answer)


def compare(url: str, baseline: Path, ops: list[str], calls: int, tasks: int, rounds: int) -> Any:
    """Paired rounds of every operation: the baseline checkout's worker and this one's."""
    asyncio.run(_create_budgets(url))
    workers = {"baseline": _worker(baseline, url, tasks), "current": _worker(ROOT, url, tasks)}
    out: dict[str, Any] = {}
    try:
        for op in ops:
            runs: dict[str, list[float]] = {"baseline": [], "current": []}
            for r in range(rounds):
                order = ("baseline", "current") if r % 2 == 0 else ("current", "baseline")
                for side in order:
                    runs[side].append(round(_ask(workers[side], op, calls), 1))
            saved = [b - c for b, c in zip(runs["baseline"], runs["current"], strict=True)]
            base = statistics.median(runs["baseline"])
            out[op] = {
                "baseline_median_us": base,
                "current_median_us": statistics.median(runs["current"]),
                "median_paired_saving_us": round(statistics.median(saved), 1),
                "saving_percent": round(100 * statistics.median(saved) / base, 1),
                "runs_us": runs,
            }
    finally:
        for worker in workers.values():
            stream: IO[str] | None = worker.stdin
            if stream is not None:
                stream.close()
            worker.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default=DEFAULT_OPS, help=f"of: {', '.join(OPS)}")
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cprofile", choices=OPS, default=None)
    parser.add_argument("--url", default=None, help="a Redis to use (its db is flushed)")
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout to compare with")
    parser.add_argument("--rounds", type=int, default=9, help="paired rounds (--baseline)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.serve:
        serve(a.url, a.tasks)
        return
    ops = [op for op in a.ops.split(",") if op]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"unknown operations {unknown}; known: {', '.join(OPS)}")

    def run(url: str) -> None:
        if a.baseline is not None:
            result = compare(url, a.baseline.resolve(), ops, a.calls, a.tasks, a.rounds)
            print(json.dumps({"tasks": a.tasks, "calls": a.calls, "ops": result}, indent=2))
            return
        result = asyncio.run(measure(url, ops, a.calls, a.tasks, a.runs))
        print(json.dumps({"tasks": a.tasks, "calls": a.calls, "ops": result}, indent=2))
        if a.cprofile is not None:
            asyncio.run(profile(url, a.cprofile, a.calls, a.tasks))

    if a.url is not None:
        run(a.url)
        return
    with RedisServer() as server:
        run(server.url)


async def profile(url: str, op: str, calls: int, tasks: int) -> None:
    """One round of ``op`` under cProfile; the costliest functions to stderr."""
    async with bk.BudgetKit.from_url(url, batching=False) as kit:
        call, counter = await _operation(kit, op), itertools.count(10**9)
        await _round(call, tasks * 4, tasks, counter)
        profiler = cProfile.Profile()
        profiler.enable()
        await _round(call, calls, tasks, counter)
        profiler.disable()
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
