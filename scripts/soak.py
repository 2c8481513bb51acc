#!/usr/bin/env python3
"""Soak: mixed budgetkit load for a set time, then the books and the memory are checked.

    python3 scripts/soak.py --seconds 60                      # a private redis-server
    python3 scripts/soak.py --seconds 600 --redis-url redis://127.0.0.1:6379/0

Load (``--concurrency`` tasks, half through an auto-batching client, half not): check,
check_tool, debit (some with an idempotency key, retried: the retry must replay), reserve then
commit / release / abandon (abandoned holds expire and are purged), top_up, limit changes, resume,
get and list, on ``--orgs`` organizations, each with session, user and org-level budgets in two
currencies with duration, rolling and calendar periods, soft limits and thresholds. Time runs
``--speedup`` times faster than the wall clock (an injected clock), so periods roll over and holds
expire many times during the run.

At the end: every outstanding hold is released, the clock jumps past every hold's expiry and
every scope is checked (purging expired holds), and then, for EVERY budget:

* the ledger invariant ``balance == initial limit - Σ ledger amounts``, exactly, in micro-units
  (the whole ledger stream is read, not a page);
* no holds left: ``held == 0`` and the hold indexes are empty;

and the memory: ``used_memory`` before the load, after it, and after ``trim_history`` of every
organization (bytes per operation and per ledger entry). The report is one JSON object on stdout;
the exit status is 1 when a check failed (``violations`` lists them). Keys live under a random
prefix (``soak-<hex>``) and are deleted at the end (``--keep`` keeps them), so a shared server is
safe to use (its memory figures then include other traffic).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as redis_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis_server

import budgetkit as bk

MICROS = 1_000_000
START = datetime(2026, 1, 1, tzinfo=UTC)
SESSIONS_PER_ORG = 6
USERS_PER_ORG = 3
EXPECTED_ERRORS = (bk.HoldExpired,)
ERRORS_SHOWN_MAX = 20


class FastClock:
    """Simulated time: ``speedup`` simulated seconds per wall-clock second, never backwards;
    ``jump`` moves it forward at once."""

    def __init__(self, speedup: float) -> None:
        self.speedup = speedup
        self.origin = time.monotonic()
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        elapsed = (time.monotonic() - self.origin) * self.speedup
        return START + timedelta(seconds=elapsed) + self.offset

    def jump(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class Org:
    name: str
    initial_limits: dict[str, int] = field(default_factory=dict)  # budget id -> limit micros
    soft: set[str] = field(default_factory=set)  # budgets with a soft limit
    resizable: list[str] = field(default_factory=list)  # session budgets without a soft limit

    def scope(self, rng: random.Random) -> bk.Scope:
        session = f"s{rng.randrange(SESSIONS_PER_ORG)}"
        child = rng.random() < 0.2
        return bk.Scope(
            self.name,
            session_id=f"{session}-child{rng.randrange(3)}" if child else session,
            root_session_id=session if child else None,
            user_id=f"u{rng.randrange(USERS_PER_ORG)}",
        )


@dataclass
class Run:
    kits: list[bk.BudgetKit]
    clock: FastClock
    orgs: list[Org]
    deadline: float
    max_ops: int
    ops: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    holds: dict[str, bk.Reservation] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def done(self) -> bool:
        return time.monotonic() >= self.deadline or sum(self.ops.values()) >= self.max_ops

    def violation(self, text: str) -> None:
        if len(self.violations) < ERRORS_SHOWN_MAX:
            self.violations.append(text)
        self.errors["violations"] += 1


async def create_budgets(kit: bk.BudgetKit, org: Org, rng: random.Random) -> None:
    async def add(kind: str, subject: str, currency: str, limit: float, **kw: Any) -> None:
        budget = await kit.create_budget(org.name, kind, subject, currency, limit, **kw)
        org.initial_limits[budget.id] = round(budget.limit * MICROS)
        if budget.soft_limit is not None:
            org.soft.add(budget.id)
        elif kind == "session":
            org.resizable.append(budget.id)

    for i in range(SESSIONS_PER_ORG):
        await add(
            "session",
            f"s{i}",
            "usd",
            rng.choice([5, 20, 50]),
            soft_limit=4 if i % 3 == 0 else None,
            period={"type": "duration", "seconds": rng.choice([60, 300, 900])},
            thresholds=[0.5, 0.9] if i % 2 else None,
        )
    for i in range(USERS_PER_ORG):
        await add("user", f"u{i}", "usd", 500, period={"type": "rolling", "window": "30m"})
        await add("user", f"u{i}", "tokens", 50_000, period={"type": "calendar", "unit": "hour"})
    await add("org", org.name, "usd", 50_000, period={"type": "calendar", "unit": "day"})
    await add("org", org.name, "tokens", 1_000_000, warn_fraction=0.5)


def amounts(rng: random.Random) -> dict[str, float]:
    out: dict[str, float] = {}
    if rng.random() < 0.9:
        out["usd"] = round(rng.choice([0.000001, 0.01, 0.05, 0.1, 0.3]) * rng.randint(1, 3), 6)
    if rng.random() < 0.6:
        out["tokens"] = rng.randint(1, 800)
    return out


async def worker(run: Run, index: int, seed: int) -> None:
    rng = random.Random(seed * 1000 + index)
    kit = run.kits[index % len(run.kits)]
    while not run.done():
        org = rng.choice(run.orgs)
        scope = org.scope(rng)
        roll = rng.random()
        name = "?"
        try:
            if roll < 0.30:
                name = "check"
                result = await kit.check(scope)
                run.outcomes[f"check:{result.action}"] += 1
            elif roll < 0.35:
                name = "check_tool"
                run.outcomes[f"check_tool:{(await kit.check_tool(scope)).status}"] += 1
            elif roll < 0.62:
                name = "debit"
                await kit.debit(scope, amounts(rng), meter_source="soak", ref_id=f"t{index}")
            elif roll < 0.66:
                name = "debit_idempotent"
                key = f"idem-{index}-{secrets.token_hex(6)}"
                spend = amounts(rng)
                first = await kit.debit(scope, spend, idempotency_key=key)
                again = await kit.debit(scope, spend, idempotency_key=key)
                if not again.replayed or [e.id for e in again.entries] != [
                    e.id for e in first.entries
                ]:
                    run.violation(f"idempotent retry did not replay: {key}")
            elif roll < 0.86:
                name = "reserve"
                ttl = rng.uniform(0.05, 1.0) * run.clock.speedup  # 50 ms..1 s of wall time
                hold = await kit.reserve(scope, amounts(rng), ttl_seconds=round(ttl, 3))
                run.outcomes[f"reserve:{'granted' if hold.granted else 'denied'}"] += 1
                if hold.granted and hold.id:
                    run.holds[hold.id] = hold
                    await asyncio.sleep(rng.uniform(0, 0.02))
                    fate = rng.random()
                    if fate < 0.7:
                        name = "commit"
                        run.holds.pop(hold.id, None)
                        await kit.commit(hold, amounts(rng), meter_source="soak")
                    elif fate < 0.9:
                        name = "release"
                        run.holds.pop(hold.id, None)
                        await kit.release(hold)
                    else:
                        name = "abandon"  # left to expire
            elif roll < 0.90:
                name = "top_up"
                bid = rng.choice(list(org.initial_limits))
                await kit.top_up(org.name, bid, rng.choice([1, 5, 0.5]))
            elif roll < 0.92:
                name = "update_limit"
                limit = rng.choice([2, 5, 20, 50])
                await kit.update_budget(org.name, rng.choice(org.resizable), limit=limit)
            elif roll < 0.95:
                name = "resume"
                await kit.resume(scope, levels=("session", "user"))
            elif roll < 0.98:
                name = "get"
                await kit.get_budget(org.name, rng.choice(list(org.initial_limits)))
            else:
                name = "list"
                await kit.list_budgets(org.name, include_disabled=True, limit=50)
        except EXPECTED_ERRORS as error:
            run.outcomes[f"{name}:{type(error).__name__}"] += 1
        except Exception as error:
            run.violation(f"{name}: unexpected {type(error).__name__}: {error}")
        run.ops[name] += 1


async def ledger_sum(client: redis_asyncio.Redis, key: str) -> tuple[int, int]:
    """Σ amounts (micros) and the number of entries of a whole ledger stream."""
    total = count = 0
    start = "-"
    while True:
        rows = await client.xrange(key, min=start, max="+", count=5000)
        for _row_id, fields in rows:
            total += int(fields[b"amt"])
            count += 1
        if len(rows) < 5000:
            return total, count
        last = rows[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


async def settle_and_check(run: Run, client: redis_asyncio.Redis) -> dict[str, Any]:
    """Resolves the holds still known, purges the expired ones, then checks every budget."""
    kit = run.kits[0]
    for hold in list(run.holds.values()):
        with contextlib.suppress(bk.HoldExpired, bk.HoldNotFound):  # expired meanwhile
            await kit.release(hold)
    run.holds.clear()
    run.clock.jump(timedelta(days=8))  # past every hold's expiry (<= 7 days)
    for org in run.orgs:
        for i in range(SESSIONS_PER_ORG):
            for u in range(USERS_PER_ORG):
                await kit.check(bk.Scope(org.name, session_id=f"s{i}", user_id=f"u{u}"))
    budgets = entries = 0
    for org in run.orgs:
        listed = await kit.list_budgets(org.name, include_disabled=True, limit=1000)
        if {b.id for b in listed} != set(org.initial_limits):
            run.violation(f"{org.name}: list_budgets does not return every budget")
        for bid, initial in org.initial_limits.items():
            budgets += 1
            raw = await client.hgetall(kit.keys.budget(org.name, bid))
            balance, held = int(raw[b"bal"]), int(raw[b"held"])
            total, count = await ledger_sum(client, kit.keys.ledger(org.name, bid))
            entries += count
            api = await kit.get_budget(org.name, bid)
            if balance != initial - total:
                run.violation(f"{bid}: balance {balance} != {initial} - {total} (ledger)")
            if round(api.balance * MICROS) != balance:
                run.violation(f"{bid}: get_budget balance {api.balance} != stored {balance}")
            zkey = f"{kit.keys.org(org.name)}hz:{bid}"
            akey = f"{kit.keys.org(org.name)}ha:{bid}"
            left = await client.zcard(zkey) + await client.hlen(akey)
            if held != 0 or left:
                run.violation(f"{bid}: holds left after settling: held={held}, indexed={left}")
    return {"budgets": budgets, "ledger_entries": entries}


async def used_memory(client: redis_asyncio.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def delete_prefix(client: redis_asyncio.Redis, prefix: str) -> int:
    deleted = 0
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        deleted += await client.unlink(key)
    return deleted


async def soak(args: argparse.Namespace, url: str) -> dict[str, Any]:
    client = redis_asyncio.Redis.from_url(url)
    prefix = f"soak-{secrets.token_hex(4)}"
    clock = FastClock(args.speedup)
    kits = [
        bk.BudgetKit(client, prefix=prefix, clock=clock),
        bk.BudgetKit(client, prefix=prefix, clock=clock, batching=False),
    ]
    rng = random.Random(args.seed)
    orgs = [Org(f"org_{i}") for i in range(args.orgs)]
    try:
        for org in orgs:
            await create_budgets(kits[0], org, rng)
        memory_start = await used_memory(client)
        started = time.monotonic()
        run = Run(kits, clock, orgs, started + args.seconds, args.max_ops)
        await asyncio.gather(*(worker(run, i, args.seed) for i in range(args.concurrency)))
        load_seconds = time.monotonic() - started
        memory_end = await used_memory(client)
        statuses: Counter[str] = Counter()
        for org in orgs:
            for budget in await kits[0].list_budgets(org.name, include_disabled=True, limit=1000):
                statuses[f"{budget.subject_type.as_wire()}:{budget.currency}:{budget.status}"] += 1
        books = await settle_and_check(run, client)
        memory_settled = await used_memory(client)
        trimmed = 0
        for org in orgs:
            trimmed += await kits[0].trim_history(org.name, events_max_len=100, ledger_max_len=100)
        memory_trimmed = await used_memory(client)
        keys = sum([1 async for _ in client.scan_iter(match=f"{prefix}:*", count=1000)])
    finally:
        if not args.keep:
            await delete_prefix(client, prefix)
        await client.aclose()
    ops = sum(run.ops.values())
    growth = memory_end - memory_start
    violations = list(run.violations)
    if args.max_bytes_per_op and ops and growth / ops > args.max_bytes_per_op:
        violations.append(f"memory grew {growth / ops:.0f} B/op > {args.max_bytes_per_op}")
    return {
        "seconds": round(load_seconds, 2),
        "simulated_hours": round(load_seconds * args.speedup / 3600, 2),
        "concurrency": args.concurrency,
        "organizations": args.orgs,
        "ops": ops,
        "ops_per_second": round(ops / load_seconds) if load_seconds else 0,
        "ops_by_kind": dict(sorted(run.ops.items())),
        "outcomes": dict(sorted(run.outcomes.items())),
        "budget_statuses_after_load": dict(sorted(statuses.items())),
        "budgets_checked": books["budgets"],
        "ledger_entries": books["ledger_entries"],
        "memory": {
            "used_memory_start": memory_start,
            "used_memory_end": memory_end,
            "growth_bytes": growth,
            "bytes_per_op": round(growth / ops, 1) if ops else None,
            "bytes_per_ledger_entry": round(growth / books["ledger_entries"], 1)
            if books["ledger_entries"]
            else None,
            "used_memory_after_settle": memory_settled,
            "used_memory_after_trim": memory_trimmed,
            "stream_entries_trimmed": trimmed,
        },
        "keys_at_end": keys,
        "prefix": prefix,
        "violations": violations,
        "ok": not violations,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, required=True, help="load duration (wall clock)")
    parser.add_argument("--redis-url", help="use this server (default: a private redis-server)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent tasks")
    parser.add_argument("--orgs", type=int, default=4, help="organizations")
    parser.add_argument("--speedup", type=float, default=600.0, help="simulated s per wall s")
    parser.add_argument("--max-ops", type=int, default=10_000_000, help="stop after this many")
    parser.add_argument(
        "--max-bytes-per-op",
        type=float,
        default=4096.0,
        help="memory growth per operation above which the run fails (0: no limit)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the keys at the end")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.orgs < 1 or args.speedup <= 0:
        parser.error("--seconds, --concurrency, --orgs and --speedup must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.redis_url:
        report = asyncio.run(soak(args, args.redis_url))
    else:
        with redis_server.RedisServer() as server:
            report = asyncio.run(soak(args, server.url))
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
