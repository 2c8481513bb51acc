"""budgetkit's own workloads, through the public API: check, debit, reserve + commit.

A scope of ``n`` budgets has a usd budget with a huge limit on each of its first ``n`` levels in
the order org, user, session, agent, app, app_channel (so 1 = org, 3 = org + user + session,
6 = every level), and nothing ever runs out. Hot mode puts every task on one scope; spread mode
gives each task its own organization.

``debit`` runs ``BudgetKit(batching=False)``: one script call (one round trip) per call,
comparable with ``raw_evalsha_noop``. ``debit_batched`` runs the default
``BudgetKit(batching=True)``: concurrent calls of the process share pipelines. ``check`` and
``reserve_commit`` use the run's setting (batching on unless ``--no-batching``).
"""

from __future__ import annotations

from typing import Any

from benchmarks.context import BenchContext
from benchmarks.measure import BenchError, Op, Row
from budgetkit._core.client import BudgetKit
from budgetkit._core.scope import Scope

#: Levels in the order a scope of n budgets takes them.
LEVEL_ORDER = ("org", "user", "session", "agent", "app", "app_channel")
HUGE_LIMIT_USD = 1_000_000_000
DEBIT_USD = 0.001
RESERVE_TTL_S = 60
SCOPE_FIELDS = {
    "user": "user_id",
    "session": "session_id",
    "agent": "agent_id",
    "app": "app_id",
    "app_channel": "app_channel_id",
}


def scope_of(org: str, size: int) -> Scope:
    """The scope of ``size`` levels (1..6) of one organization."""
    if not 1 <= size <= len(LEVEL_ORDER):
        raise BenchError(f"scope size must be in 1..{len(LEVEL_ORDER)}")
    ids = {SCOPE_FIELDS[level]: f"{level}_1" for level in LEVEL_ORDER[1:size]}
    return Scope(organization_id=org, **ids)


async def create_scope_budgets(kit: BudgetKit, scope: Scope) -> list[str]:
    """One usd budget with a huge limit per level of the scope; returns the budget ids."""
    ids = []
    for level, subject_id in scope.levels():
        budget = await kit.create_budget(
            scope.organization_id, level, subject_id, "usd", HUGE_LIMIT_USD
        )
        ids.append(budget.id)
    return ids


async def make_scopes(kit: BudgetKit, size: int, concurrency: int, spread: bool) -> list[Scope]:
    """The scope of each task: one shared (hot) or one organization per task (spread)."""
    count = concurrency if spread else 1
    scopes = [scope_of(f"org_{i}", size) for i in range(count)]
    for scope in scopes:
        await create_scope_budgets(kit, scope)
    return [scopes[i % count] for i in range(concurrency)]


def check_op(kit: BudgetKit, scope: Scope) -> Op:
    async def op() -> bool:
        result = await kit.check(scope)
        if result.action != "continue":
            raise BenchError(f"check said {result.action}: {result.message}")
        return True

    return op


def debit_op(kit: BudgetKit, scope: Scope) -> Op:
    async def op() -> bool:
        await kit.debit(scope, {"usd": DEBIT_USD}, meter_source="bench")
        return True

    return op


def reserve_commit_op(kit: BudgetKit, scope: Scope) -> Op:
    """reserve then commit of the same amount (DESIGN.md's two-phase API, when it exists)."""
    reserve: Any = getattr(kit, "reserve")  # noqa: B009 - optional API, absent in older builds
    commit: Any = getattr(kit, "commit")  # noqa: B009

    async def op() -> bool:
        hold = await reserve(scope, {"usd": DEBIT_USD}, ttl_seconds=RESERVE_TTL_S)
        if not hold.granted:
            raise BenchError(f"reserve denied: {hold.check}")
        await commit(hold, {"usd": DEBIT_USD})
        return True

    return op


OPS = {
    "check": check_op,
    "debit": debit_op,
    "debit_batched": debit_op,
    "reserve_commit": reserve_commit_op,
}
#: Workloads whose batching is fixed; the others follow the run's --no-batching.
FIXED_BATCHING = {"debit": False, "debit_batched": True}


def batching_of(ctx: BenchContext, name: str) -> bool:
    return FIXED_BATCHING.get(name, ctx.settings.batching)


def unavailable_reason(name: str) -> str | None:
    """Why a budgetkit workload cannot run with this build, or None."""
    if name == "reserve_commit" and not (
        hasattr(BudgetKit, "reserve") and hasattr(BudgetKit, "commit")
    ):
        return "BudgetKit has no reserve/commit in this build"
    return None


async def run_budgetkit(
    ctx: BenchContext, name: str, size: int, concurrency: int, spread: bool | None = None
) -> Row:
    """One timed run of a budgetkit operation over scopes of ``size`` budgets.

    ``spread`` None = the run's mode (``--spread``); True/False for the extra rows of a run.
    """
    spread = ctx.settings.spread if spread is None else spread
    batching = batching_of(ctx, name)
    client = ctx.client(concurrency)
    try:
        kit = ctx.kit(client, batching)
        scopes = await make_scopes(kit, size, concurrency, spread)
        ops = [OPS[name](kit, scope) for scope in scopes]
        measurement = await ctx.measure(ops)
        notes = batching_note(kit)
    finally:
        await client.aclose()
    return measurement.row(name, concurrency, size, mode="spread" if spread else "hot", notes=notes)


def batching_note(kit: BudgetKit) -> str:
    """How calls coalesced: 'batching off', or the mean calls per pipeline."""
    batcher = kit._batcher
    if batcher is None:
        return "batching off: one round trip per call"
    if batcher.batches == 0:
        return "batching on (no call was concurrent)"
    mean = batcher.batched_calls / batcher.batches
    return f"batching on: {mean:.1f} calls per pipeline"
