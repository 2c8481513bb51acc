"""Concurrency (SPEC §2, §4 debit, §9): many OS processes debiting shared budgets at once.

4 spawned processes x 32 asyncio tasks each run 51,200 debits against one organization's
hierarchy (org → user → root session, some through child sessions), on the real Redis server
and its clock, without periods so every number is exact. Every worker tallies what it debited,
in integer micros, per (subject, currency); the parent then checks, for every budget:

- no lost update: ``limit - balance == Σ debited by the workers`` on that budget;
- the books: ``balance == limit - Σ ledger amounts`` and one ledger entry per debit that hit it
  (paused and exhausted budgets are charged too);
- the status is the one derived from the final balance, and each edge-triggered event
  (warning, paused, exhausted) exists exactly once iff the budget crossed into that state.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

import budgetkit as bk
from tests.support import micros

pytestmark = [pytest.mark.real, pytest.mark.slow]

ORG = "org_load"
USER = "usr_load"
METER = "load_test"
PROCESSES = 4
TASKS_PER_PROCESS = 32
DEBITS_PER_TASK = 400  # 4 x 32 x 400 = 51,200 debits
WORKER_DEADLINE_S = 120.0  # a worker gives up (and fails the test) after this long
POOL_TIMEOUT_S = 180.0  # the parent stops waiting (and kills the pool) after this long
BARRIER_TIMEOUT_S = 60.0
XRANGE_PAGE = 10_000
USD_MAX_MICROS = 5_000_000  # a debit is up to 5 usd ...
TOKENS_MAX_MICROS = 3_000_000_000  # ... and up to 3,000 tokens, both with 6 decimals
SESSIONS = [f"sess_{i}" for i in range(6)]


@dataclass(frozen=True)
class Spec:
    """One budget of the layout: subject, currency, limit and soft limit (micros)."""

    subject_type: str
    subject_id: str
    currency: str
    limit: int
    soft: int | None = None
    warn_fraction: float = 0.2


# Expected spend over the run: ~115k usd and ~69M tokens for the org and the user, and about a
# sixth of that per session. Limits are picked so that several budgets end exhausted mid-run
# (then keep being charged), some are paused by a soft limit, and some never run out.
LAYOUT = [
    Spec("org", ORG, "usd", 100_000 * 10**6),  # exhausted late in the run
    Spec("user", USER, "usd", 1_000_000 * 10**6, soft=60_000 * 10**6),  # paused mid-run
    Spec("user", USER, "tokens", 50_000_000 * 10**6),  # exhausted ~70% in
    Spec("session", "sess_0", "usd", 5_000 * 10**6),  # exhausted early
    Spec("session", "sess_1", "usd", 1_000_000 * 10**6),  # never low
    Spec("session", "sess_1", "tokens", 2_000_000 * 10**6),  # exhausted early
    Spec("session", "sess_2", "usd", 15_000 * 10**6, soft=8_000 * 10**6),  # paused, exhausted
    Spec("session", "sess_3", "tokens", 10**9 * 10**6, warn_fraction=0.99),  # warning only
    Spec("session", "sess_4", "usd", 30_000 * 10**6),  # never low
    # sess_5 has no budget of its own: its debits hit only the user and the org.
]


def _tally_key(subject_type: str, subject_id: str, currency: str) -> str:
    return f"{subject_type}:{subject_id}:{currency}"


# -- worker side (runs in spawned processes: module-level, picklable) ----------------------------

_barrier: Any = None


def _init_worker(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


async def _debit_task(
    kit: bk.BudgetKit, rng: random.Random, tag: str, totals: dict[str, list[int]]
) -> None:
    for _ in range(DEBITS_PER_TASK):
        root = rng.choice(SESSIONS)
        # Half of the debits come from a child session, which charges its root's budgets.
        child = f"{root}_child_{tag}" if rng.random() < 0.5 else None
        scope = bk.Scope(
            organization_id=ORG,
            session_id=child or root,
            root_session_id=root if child else None,
            user_id=USER,
        )
        roll = rng.random()  # 80%: usd and tokens; 10%: usd only; 10%: tokens only
        amounts: dict[str, int] = {}
        if roll < 0.9:
            amounts["usd"] = rng.randint(1, USD_MAX_MICROS)
        if roll < 0.8 or roll >= 0.9:
            amounts["tokens"] = rng.randint(1, TOKENS_MAX_MICROS)
        await kit.debit(scope, {c: m / 1e6 for c, m in amounts.items()}, meter_source=METER)
        for currency, amount in amounts.items():
            for level, sid in (("session", root), ("user", USER), ("org", ORG)):
                slot = totals[_tally_key(level, sid, currency)]
                slot[0] += amount
                slot[1] += 1


async def _worker_main(url: str, index: int, seed: int) -> dict[str, Any]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    async with bk.BudgetKit.from_url(url) as kit:
        await kit.check(bk.Scope(organization_id=ORG, user_id=USER))  # connect, load scripts
        await asyncio.to_thread(_barrier.wait, BARRIER_TIMEOUT_S)
        started = time.time()
        rngs = [random.Random(seed * 1000 + i) for i in range(TASKS_PER_PROCESS)]
        tasks = [_debit_task(kit, rng, f"p{index}t{i}", totals) for i, rng in enumerate(rngs)]
        await asyncio.wait_for(asyncio.gather(*tasks), WORKER_DEADLINE_S)
        finished = time.time()
    return {
        "totals": {k: tuple(v) for k, v in totals.items()},
        "debits": TASKS_PER_PROCESS * DEBITS_PER_TASK,
        "pid": os.getpid(),
        "started": started,
        "finished": finished,
    }


def _worker(args: tuple[str, int, int]) -> dict[str, Any]:
    url, index, seed = args
    return asyncio.run(_worker_main(url, index, seed))


def _run_workers(url: str, seed: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    pool = ctx.Pool(PROCESSES, initializer=_init_worker, initargs=(barrier,))
    try:
        jobs = [(url, i, seed + i) for i in range(PROCESSES)]
        result = pool.map_async(_worker, jobs, chunksize=1)
        return result.get(timeout=POOL_TIMEOUT_S)
    finally:
        pool.terminate()
        pool.join()


# -- parent side ---------------------------------------------------------------------------------


async def _ledger(redis: Redis, key: str) -> list[dict[bytes, bytes]]:
    """Every entry of a ledger stream, oldest first (XRANGE pages)."""
    out: list[dict[bytes, bytes]] = []
    start = b"-"
    while True:
        page = await redis.xrange(key, min=start, max="+", count=XRANGE_PAGE)
        out += [fields for _, fields in page]
        if len(page) < XRANGE_PAGE:
            return out
        start = b"(" + page[-1][0]


def _expected_status(spec: Spec, balance: int) -> bk.BudgetStatus:
    if balance <= 0:
        return bk.BudgetStatus.EXHAUSTED
    if spec.soft is not None and spec.limit - balance >= spec.soft:
        return bk.BudgetStatus.PAUSED
    return bk.BudgetStatus.ACTIVE


async def test_concurrent_debits_are_exact(real_redis: Redis, redis_server_url: str) -> None:
    kit = bk.BudgetKit(real_redis)  # the server's clock, like the workers
    budgets: dict[str, tuple[Spec, bk.Budget]] = {}
    for spec in LAYOUT:
        budget = await kit.create_budget(
            ORG,
            spec.subject_type,
            spec.subject_id,
            spec.currency,
            spec.limit / 1e6,
            soft_limit=None if spec.soft is None else spec.soft / 1e6,
            warn_fraction=spec.warn_fraction,
        )
        assert budget.period is None
        budgets[budget.id] = (spec, budget)

    seed = random.randrange(1_000_000)
    began = time.perf_counter()
    results = await asyncio.to_thread(_run_workers, redis_server_url, seed)
    wall = time.perf_counter() - began

    assert len({r["pid"] for r in results} | {os.getpid()}) == PROCESSES + 1
    debits = sum(r["debits"] for r in results)
    assert debits >= 50_000
    window = max(r["finished"] for r in results) - min(r["started"] for r in results)
    said: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        for key, (amount, count) in r["totals"].items():
            said[key][0] += amount
            said[key][1] += count

    events = [e async for e in kit.events(ORG, follow=False)]
    per_budget = Counter((e.data.budget_id, e.type) for e in events)
    assert {e.data.budget_id for e in events} <= set(budgets), events
    entry_ids: set[bytes] = set()
    total_entries = 0
    exhausted = paused = 0
    lines = []
    for bid, (spec, _created) in budgets.items():
        tag = f"{spec.subject_type}:{spec.subject_id}:{spec.currency} seed={seed}"
        raw = await real_redis.hgetall(kit.keys.budget(ORG, bid))
        balance = int(raw[b"bal"])
        got = await kit.get_budget(ORG, bid)
        assert micros(got.balance) == balance and micros(got.limit) == spec.limit, tag

        # No lost update: what the workers say they debited is exactly what the balance lost.
        debited, hits = said[_tally_key(spec.subject_type, spec.subject_id, spec.currency)]
        assert spec.limit - balance == debited, tag

        # The books: one entry per debit that hit the budget, summing to limit - balance.
        entries = await _ledger(real_redis, kit.keys.ledger(ORG, bid))
        assert len(entries) == hits, tag
        assert spec.limit - sum(int(e[b"amt"]) for e in entries) == balance, tag
        assert all(e[b"src"] == METER.encode() and int(e[b"amt"]) > 0 for e in entries), tag
        if spec.subject_type == "session":
            sessions = {e[b"sess"].decode() for e in entries}
            assert all(
                s == spec.subject_id or s.startswith(f"{spec.subject_id}_child_") for s in sessions
            )
        entry_ids.update(e[b"id"] for e in entries)
        total_entries += len(entries)

        # Status derived from the final balance; each state entered exactly once (edges).
        status = _expected_status(spec, balance)
        assert got.status == status, tag
        warn_at = spec.limit * round(spec.warn_fraction * 10**6) // 10**6
        crossed_soft = spec.soft is not None and spec.limit - balance >= spec.soft
        assert per_budget[(bid, "budget.exhausted")] == (status == bk.BudgetStatus.EXHAUSTED), tag
        assert per_budget[(bid, "budget.paused")] == crossed_soft, tag
        assert per_budget[(bid, "budget.warning")] == (balance <= warn_at), tag
        assert per_budget[(bid, "budget.resumed")] == 0, tag
        exhausted += status == bk.BudgetStatus.EXHAUSTED
        paused += crossed_soft
        lines.append(
            f"  {tag.split(' ')[0]:<28} {status.value:<9} {balance / 1e6:>18.6f}"
            f" spent {debited / 1e6:>18.6f} in {hits} debits"
        )

    assert len(entry_ids) == total_entries  # ledger ids are unique across the whole run
    assert exhausted >= 3 and paused >= 2  # the run did exercise charging past the limits
    print(
        f"\n{debits} debits from {PROCESSES} processes x {TASKS_PER_PROCESS} tasks in "
        f"{window:.2f} s of debiting ({debits / window:,.0f} debits/s; {wall:.2f} s with "
        f"process start-up); {total_entries} ledger entries, {len(events)} events; seed {seed}"
    )
    print("\n".join(lines))
