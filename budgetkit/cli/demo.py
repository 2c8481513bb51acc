"""`budgetkit demo`: a small fleet of agent workers spending through the real API.

Several concurrent sessions share stacked session / user / org budgets (some periodic); every
worker makes each simulated LLM call inside a spend guard (``kit.spend``: the estimate reserved,
the usage recorded, the call charged on exit), and a denial tells it whether to wait, resume
or stop. Events are printed as they fire; the run ends with the rollovers of the hourly token
budget (unused tokens carried, up to its rollover_max), a table of budgets and a reconciliation
line (balance == limit - Σ ledger, exactly). Time is simulated (a clock that advances per
call), so periodic budgets reset within seconds. With no Redis URL it runs on an in-process
fakeredis server (``in_process_redis``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from budgetkit import Budget, BudgetEvent, BudgetExceeded, BudgetKit, Scope
from budgetkit._core.amounts import MICROS_PER_UNIT
from budgetkit._core.ids import uuid7_hex

WORKERS = 6
CALLS_PER_WORKER_MAX = 40
SIM_STEP = timedelta(minutes=1)
USD_PER_MTOK_IN, USD_PER_MTOK_OUT = 2.0, 8.0
TOKENS_IN_MAX, TOKENS_OUT_MAX = 8000, 2000
#: What a worker reserves before a call: its largest possible cost.
ESTIMATE = {
    "usd": (TOKENS_IN_MAX * USD_PER_MTOK_IN + TOKENS_OUT_MAX * USD_PER_MTOK_OUT) / 1e6,
    "tokens": TOKENS_IN_MAX + TOKENS_OUT_MAX,
}
TOKENS_ROLLOVER_MAX = 30_000
EVENT_DRAIN_TIMEOUT_S = 2.0


def in_process_redis() -> Redis:
    """A fakeredis server in this process, for a demo without a Redis URL.

    fakeredis is imported here, not with the module: only this path needs it, and its import
    costs every other command ~80 ms. The demo runs on it without auto-batching: under CPU load
    a pipelined call on fakeredis's async client was seen, about once in ten loaded runs, to wait
    for a reply that never came (the event loop idle in select; real Redis is not affected).
    """
    import fakeredis

    return fakeredis.FakeAsyncRedis()


@dataclass
class SimClock:
    """Simulated time: starts now (UTC) and advances by SIM_STEP on every tick."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> None:
        self.now += SIM_STEP


async def _setup(kit: BudgetKit, org: str) -> list[Budget]:
    made = [
        await kit.create_budget(org, "org", org, "usd", 3, warn_fraction=0.25),
        await kit.create_budget(org, "user", "usr_alice", "usd", 1.5, soft_limit=1),
        await kit.create_budget(
            org,
            "user",
            "usr_bob",
            "tokens",
            120_000,
            period="hour",
            rollover_max=TOKENS_ROLLOVER_MAX,
        ),
    ]
    for i in range(WORKERS):
        made.append(await kit.create_budget(org, "session", f"session_{i}", "usd", 0.5))
    return made


async def _worker(
    kit: BudgetKit, clock: SimClock, scope: Scope, rng: random.Random, say: Callable[[str], None]
) -> int:
    calls = 0
    for _ in range(CALLS_PER_WORKER_MAX):
        ref_id = f"gen_{uuid7_hex()[:12]}"
        try:
            async with kit.spend(scope, ESTIMATE, ref_type="llm_generation", ref_id=ref_id) as s:
                tokens_in = rng.randint(500, TOKENS_IN_MAX)
                tokens_out = rng.randint(100, TOKENS_OUT_MAX)
                usd = (tokens_in * USD_PER_MTOK_IN + tokens_out * USD_PER_MTOK_OUT) / 1e6
                await s.record({"usd": usd, "tokens": tokens_in + tokens_out})
        except BudgetExceeded as denied:
            if not await _after_denial(kit, clock, scope, denied, say):
                return calls
            continue
        clock.tick()
        calls += 1
        await asyncio.sleep(0)
    return calls


async def _after_denial(
    kit: BudgetKit,
    clock: SimClock,
    scope: Scope,
    denied: BudgetExceeded,
    say: Callable[[str], None],
) -> bool:
    """What a worker does when its reservation is denied; False: it stops."""
    verdict = denied.check
    if verdict.currency == "tokens" and verdict.should_stop():
        clock.tick()  # the hourly token budget: wait for the next period
        await asyncio.sleep(0)
        return True
    if verdict.should_pause() and verdict.subject_type is not None:
        say(f"  {scope.session_id}: paused by its {verdict.subject_type} budget; resumed")
        await kit.resume(scope, levels=[verdict.subject_type])
        return True
    say(f"  {scope.session_id}: stops ({verdict.currency}: {verdict.error_code})")
    return False


EVENT_POLL_S = 0.05


async def _print_events(
    kit: BudgetKit, org: str, say: Callable[[str], None], done: asyncio.Event
) -> None:
    """Prints events as they fire until ``done`` (then the last ones): polls without a blocking
    XREAD. It stops on a flag, not on cancellation: on Python < 3.12 a Redis call can swallow a
    cancellation (budgetkit._core.cancellation), and the demo hung once in CI that way."""
    after: str | None = None
    while True:
        last_round = done.is_set()
        async for event in kit.events(org, after=after, follow=False):
            say(_event_line(event))
            after = event.id
        if last_round:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), EVENT_POLL_S)


def _event_line(event: BudgetEvent) -> str:
    d = event.data
    text = d.message or f"balance {d.balance:.2f} {d.currency}"
    return f"  event {event.type:<17} {d.budget_id[-8:]}  {text}"


async def run_demo(
    client: Redis, say: Callable[[str], None] = print, seed: int = 7, *, batching: bool = True
) -> bool:
    """Runs the demo on ``client``; returns True when every budget reconciles exactly.
    ``batching``: the in-process fakeredis runs without auto-batching (see in_process_redis)."""
    clock = SimClock()
    kit = BudgetKit(client, prefix="bkdemo", clock=clock, batching=batching)
    org = f"demo_{uuid7_hex()[-12:]}"
    budgets = await _setup(kit, org)
    say(f"budgetkit demo: org {org}, {len(budgets)} budgets, {WORKERS} concurrent workers")
    done = asyncio.Event()
    printer = asyncio.create_task(_print_events(kit, org, say, done))
    rng = random.Random(seed)
    users = ["usr_alice", "usr_bob"]
    scopes = [
        Scope(organization_id=org, session_id=f"session_{i}", user_id=users[i % 2])
        for i in range(WORKERS)
    ]
    calls = await asyncio.gather(*(_worker(kit, clock, s, rng, say) for s in scopes))
    done.set()
    await printer
    say(f"{sum(calls)} metered LLM calls over {clock.now - budgets[0].created_at} simulated")
    return await _report(kit, org, say)


async def _rollovers(kit: BudgetKit, budget: Budget, say: Callable[[str], None]) -> None:
    """The budget's period resets with what each carried (SPEC §11), from its ledger."""
    entries = list(reversed(await kit.ledger(budget.organization_id, budget.id, limit=1000)))
    balance = round(budget.limit * MICROS_PER_UNIT) + sum(
        round(e.amount * MICROS_PER_UNIT) for e in entries if e.meter_source == "limit_change"
    )
    limit = round(budget.limit * MICROS_PER_UNIT)
    for e in entries:
        before, balance = balance, balance - round(e.amount * MICROS_PER_UNIT)
        if e.meter_source == "period_reset":
            carried = (balance - limit) / MICROS_PER_UNIT
            say(
                f"  rollover {e.created_at:%H:%M} {budget.subject_id} {budget.currency}: "
                f"{before / MICROS_PER_UNIT:,.0f} unused, {carried:,.0f} carried "
                f"(at most {budget.rollover_max:,.0f})"
            )


async def _report(kit: BudgetKit, org: str, say: Callable[[str], None]) -> bool:
    rows = await kit.list_budgets(org, limit=100)
    for b in rows:
        if b.rollover_max is not None:
            await _rollovers(kit, b, say)
    say(f"{'budget':<12} {'subject':<20} {'cur':<7} {'limit':>12} {'balance':>14} status")
    drift_micros = 0
    for b in sorted(rows, key=lambda r: (r.subject_type.value, r.subject_id)):
        entries = await kit.ledger(org, b.id, limit=1000)
        spent = sum(round(e.amount * MICROS_PER_UNIT) for e in entries)
        initial = b.limit + sum(e.amount for e in entries if e.meter_source == "limit_change")
        drift_micros += abs(
            round(initial * MICROS_PER_UNIT) - spent - round(b.balance * MICROS_PER_UNIT)
        )
        subject = f"{b.subject_type.as_wire()}:{b.subject_id}"
        say(
            f"{b.id[-10:]:<12} {subject[:20]:<20} {b.currency:<7} {b.limit:>12.2f} "
            f"{b.balance:>14.6f} {b.status.value}"
        )
    say(
        f"reconciliation: {len(rows)} budgets, balance == limit - sum(ledger) for all: "
        f"{'yes' if drift_micros == 0 else 'NO'} (drift {drift_micros} micro-units)"
    )
    return drift_micros == 0
