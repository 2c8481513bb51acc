"""Baselines on the same Redis in the same run: what the alternatives cost and what they get wrong.

- ``raw_evalsha_noop``: bare redis-py ``EVALSHA`` of ``return 1`` (the floor of any script call).
- ``naive_check_then_incr``: GET, compare with the limit in Python, INCRBYFLOAT — the way
  gateways do it — with every task spending against one small limit; reports the overspend.
- ``watch_multi_exec``: an optimistic WATCH/MULTI/EXEC debit of three integer balances.

The last two only move balances: no ledger entries, events or statuses, which budgetkit writes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from benchmarks.context import BenchContext
from benchmarks.measure import BenchError, Op, Row

NOOP_SCRIPT = "return 1"
NAIVE_LIMIT_USD = 1.0
NAIVE_SPEND_USD = 0.01
WATCH_BUDGETS = 3
WATCH_BALANCE_MICROS = 10**15
WATCH_DEBIT_MICROS = 1000
WATCH_RETRIES_MAX = 10_000
MICRO_DIGITS = 6


async def raw_evalsha_noop(ctx: BenchContext, concurrency: int) -> Row:
    client = ctx.client(concurrency)
    try:
        sha = str(await client.script_load(NOOP_SCRIPT))

        async def op() -> bool:
            await client.evalsha(sha, 0)
            return True

        measurement = await ctx.measure([op] * concurrency)
    finally:
        await client.aclose()
    return measurement.row("raw_evalsha_noop", concurrency, 0, mode="-")


@dataclass(slots=True)
class RoundBook:
    """Which round of an overspend race is open, and the overspend of each settled one.

    A task that finds no room left closes its round (``close``: later attempts go to the next
    one); the last attempt to leave a closed round (``leave`` says True) has the caller read the
    round's final spent amount and ``record`` it.
    """

    current: int = 0
    in_flight: Counter[int] = field(default_factory=Counter)
    settled: set[int] = field(default_factory=set)
    overspends: list[float] = field(default_factory=list)

    def enter(self) -> int:
        """Starts an attempt on the open round; returns that round."""
        n = self.current
        self.in_flight[n] += 1
        return n

    def close(self, n: int) -> None:
        self.current = max(self.current, n + 1)

    def leave(self, n: int) -> bool:
        """Ends an attempt on round ``n``; True when the round is now due for settling."""
        self.in_flight[n] -= 1
        if self.current > n and self.in_flight[n] == 0 and n not in self.settled:
            self.settled.add(n)
            return True
        return False

    def record(self, spent_usd: float) -> None:
        self.overspends.append(round(max(0.0, spent_usd - NAIVE_LIMIT_USD), MICRO_DIGITS))


@dataclass(slots=True)
class NaiveRounds:
    """Rounds of the check-then-increment race, each on a fresh key with the small limit (see
    RoundBook). In-flight increments land on their own round's key."""

    client: Redis
    key_base: str
    book: RoundBook = field(default_factory=RoundBook)

    async def attempt(self) -> bool:
        n = self.book.enter()
        key = f"{self.key_base}:{n}"
        try:
            spent = float(await self.client.get(key) or 0)
            if spent + NAIVE_SPEND_USD > NAIVE_LIMIT_USD + 1e-9:
                self.book.close(n)
                return False
            await self.client.incrbyfloat(key, NAIVE_SPEND_USD)
            return True
        finally:
            if self.book.leave(n):
                self.book.record(float(await self.client.get(key) or 0))
                await self.client.unlink(key)


async def naive_check_then_incr(ctx: BenchContext, concurrency: int) -> Row:
    client = ctx.client(concurrency)
    try:
        rounds = NaiveRounds(client, ctx.key("{naive}", "spent"))
        measurement = await ctx.measure([rounds.attempt] * concurrency)
    finally:
        await client.aclose()
    spends = rounds.book.overspends
    worst = max(spends, default=0.0)
    mean = sum(spends) / len(spends) if spends else 0.0
    notes = (
        f"limit {NAIVE_LIMIT_USD:g} usd, {NAIVE_SPEND_USD:g} per spend; {len(spends)} rounds; "
        f"overspend worst {worst:g} ({100 * worst / NAIVE_LIMIT_USD:.0f}% of the limit), "
        f"mean {mean:.4g}; an op is GET + INCRBYFLOAT"
    )
    return measurement.row(
        "naive_check_then_incr", concurrency, 1, mode="hot", overspend=worst, notes=notes
    )


def _raise_if_cancelled() -> None:
    """Re-raises a cancellation that redis-py's WATCH pipeline turned into a WatchError (the
    harness cancels the operations left in flight when the window closes)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def watch_op(client: Redis, keys: list[str], retries: Counter[str]) -> Op:
    async def op() -> bool:
        for _ in range(WATCH_RETRIES_MAX):
            async with client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*keys)
                    values: list[Any] = await pipe.mget(keys)
                    balances = [int(v) for v in values]
                    if min(balances) < WATCH_DEBIT_MICROS:
                        raise BenchError("watch_multi_exec balance ran out")
                    pipe.multi()  # type: ignore[no-untyped-call, unused-ignore]
                    for key in keys:
                        pipe.decrby(key, WATCH_DEBIT_MICROS)
                    await pipe.execute()
                    retries["commits"] += 1
                    return True
                except WatchError:
                    retries["retries"] += 1
                    _raise_if_cancelled()
        raise BenchError(f"no commit after {WATCH_RETRIES_MAX} WATCH retries")

    return op


async def watch_multi_exec(ctx: BenchContext, concurrency: int) -> Row:
    client = ctx.client(concurrency)
    keys = [ctx.key("{watch}", f"balance{i}") for i in range(WATCH_BUDGETS)]
    retries: Counter[str] = Counter()
    try:
        await client.mset(dict.fromkeys(keys, WATCH_BALANCE_MICROS))
        measurement = await ctx.measure([watch_op(client, keys, retries)] * concurrency)
    finally:
        await client.aclose()
    per_op = retries["retries"] / max(1, retries["commits"])
    notes = f"{per_op:.2f} WATCH retries per committed debit (warm-up included)"
    return measurement.row("watch_multi_exec", concurrency, WATCH_BUDGETS, mode="hot", notes=notes)
