"""``reserve_commit_gate``: budgetkit's answer to ``naive_check_then_incr``, measured the same way.

Every task spends against one small budget (1 usd, 0.01 per spend) through ``reserve`` (granted
only if the available balance covers the amount, atomically) and ``commit``. A denied reserve
closes the round; once no attempt of a closed round is in flight, the budget's final spend is
read and its overspend (spend beyond the limit) recorded. The naive baseline overspends under
concurrency; this must not, at any concurrency.

Each round has its own organization and budget, created before the timed window (a bounded
pool sized from the run's duration); a task that finds the pool used up waits and is not
counted, and the row says so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from benchmarks.baselines import NAIVE_LIMIT_USD, NAIVE_SPEND_USD, RoundBook
from benchmarks.context import BenchContext
from benchmarks.measure import BenchError, Row
from budgetkit._core.client import BudgetKit
from budgetkit._core.scope import Scope

#: Spends per second the pre-created rounds can absorb (well above what one process reaches).
ROUND_SPENDS_PER_S = 20_000
ROUNDS_MIN = 20
ROUNDS_MAX = 4000
CREATE_CONCURRENCY = 64
EXHAUSTED_WAIT_S = 0.005
RESERVE_TTL_S = 60


def rounds_for(seconds: float) -> int:
    spends_per_round = round(NAIVE_LIMIT_USD / NAIVE_SPEND_USD)
    wanted = int(seconds * ROUND_SPENDS_PER_S / spends_per_round) + ROUNDS_MIN
    return max(ROUNDS_MIN, min(ROUNDS_MAX, wanted))


async def create_rounds(kit: BudgetKit, count: int) -> list[tuple[Scope, str]]:
    """``count`` organizations with one 1 usd org budget each: (scope, budget id)."""
    semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(n: int) -> tuple[Scope, str]:
        org = f"gate_{n}"
        async with semaphore:
            budget = await kit.create_budget(org, "org", org, "usd", NAIVE_LIMIT_USD)
        return Scope(organization_id=org), budget.id

    return list(await asyncio.gather(*(one(n) for n in range(count))))


@dataclass(slots=True)
class GateRounds:
    """Rounds of reserve + commit against a small budget; see the module docstring."""

    kit: BudgetKit
    rounds: list[tuple[Scope, str]]
    book: RoundBook = field(default_factory=RoundBook)
    ran_out: bool = False

    async def attempt(self) -> bool:
        if self.book.current >= len(self.rounds):
            self.ran_out = True
            await asyncio.sleep(EXHAUSTED_WAIT_S)
            return False
        n = self.book.enter()
        scope, budget_id = self.rounds[n]
        try:
            hold: Any = await self.kit.reserve(
                scope, {"usd": NAIVE_SPEND_USD}, ttl_seconds=RESERVE_TTL_S
            )
            if not hold.granted:
                self.book.close(n)
                return False
            await self.kit.commit(hold, {"usd": NAIVE_SPEND_USD})
            return True
        finally:
            if self.book.leave(n):
                budget = await self.kit.get_budget(scope.organization_id, budget_id)
                self.book.record(budget.limit - budget.balance)


async def reserve_commit_gate(ctx: BenchContext, concurrency: int) -> Row:
    client = ctx.client(concurrency)
    try:
        kit = ctx.kit(client)
        seconds = ctx.settings.warmup_s + ctx.settings.duration_s
        rounds = GateRounds(kit, await create_rounds(kit, rounds_for(seconds)))
        measurement = await ctx.measure([rounds.attempt] * concurrency)
    finally:
        await client.aclose()
    spends = rounds.book.overspends
    if not spends:
        raise BenchError("no round of reserve_commit_gate completed")
    worst = max(spends)
    notes = (
        f"limit {NAIVE_LIMIT_USD:g} usd, {NAIVE_SPEND_USD:g} per spend; {len(spends)} rounds; "
        f"overspend worst {worst:g}; an op is reserve + commit"
    )
    if rounds.ran_out:
        notes += f"; the {len(rounds.rounds)} pre-created rounds ran out (ops/s is a floor)"
    return measurement.row(
        "reserve_commit_gate", concurrency, 1, mode="hot", overspend=worst, notes=notes
    )
