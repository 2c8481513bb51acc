"""Behaviour of the enforcement core (SPEC §3-7, §9) on both tiers: real Redis and fakeredis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import ManualClock, all_entries, assert_invariant, build_kit, close_kit

import budgetkit as bk

ORG = "org_1"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture(params=["async", "sync"])
async def kit(
    request: pytest.FixtureRequest, redis: Redis, clock: ManualClock
) -> AsyncIterator[bk.BudgetKit]:
    """The async client, and the blocking facade (budgetkit.sync) driven through threads: every
    behaviour test here runs against both, on both tiers."""
    built = build_kit(request.param, redis, clock=clock)
    yield built
    await close_kit(built)


def session_scope(session: str = "session_a", **kw: str) -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id=session, **kw)


async def make(kit: bk.BudgetKit, limit: float = 100, **kw: object) -> bk.Budget:
    args: dict[str, object] = {
        "organization_id": ORG,
        "subject_type": "session",
        "subject_id": "session_a",
        "currency": "usd",
        "limit": limit,
    }
    args.update(kw)
    return await kit.create_budget(**args)  # type: ignore[arg-type]


# -- lifecycle -------------------------------------------------------------------------------


async def test_create_and_get(kit: bk.BudgetKit) -> None:
    b = await make(kit, 10, soft_limit=8, metadata={"team": "a", "x": None})
    assert b.balance == 10 and b.limit == 10 and b.soft_limit == 8
    assert b.status == bk.BudgetStatus.ACTIVE and b.period is None and b.period_started_at is None
    assert b.id.startswith("bdgt_") and len(b.id) == 37
    got = await kit.get_budget(ORG, b.id)
    assert got == b
    assert got.metadata == {"team": "a", "x": None}


async def test_create_validation(kit: bk.BudgetKit) -> None:
    with pytest.raises(bk.InvalidLimit, match="Limit must be positive"):
        await make(kit, 0)
    with pytest.raises(bk.InvalidLimit, match="Limit must be positive"):
        await make(kit, -5)
    with pytest.raises(bk.InvalidLimit, match="Soft limit must be between 0 and limit"):
        await make(kit, 10, soft_limit=11)
    with pytest.raises(bk.InvalidLimit, match="Soft limit must be between 0 and limit"):
        await make(kit, 10, soft_limit=0)
    with pytest.raises(bk.InvalidPeriod):
        await make(kit, 10, period={"type": "rolling", "window": "1mo"})
    with pytest.raises(bk.InvalidPeriod):
        await make(kit, 10, period={"type": "calendar", "unit": "fortnight"})
    with pytest.raises(bk.InvalidInput, match="org-level"):
        await make(kit, 10, subject_type="org", subject_id="other")


async def test_org_isolation(kit: bk.BudgetKit) -> None:
    b = await make(kit)
    with pytest.raises(bk.BudgetNotFound):
        await kit.get_budget("org_2", b.id)
    with pytest.raises(bk.BudgetNotFound):
        await kit.top_up("org_2", b.id, 5)
    with pytest.raises(bk.BudgetNotFound):
        await kit.update_budget("org_2", b.id, limit=1)
    with pytest.raises(bk.BudgetNotFound):
        await kit.ledger("org_2", b.id)
    assert await kit.list_budgets("org_2") == []


async def test_list_filters_and_pages(kit: bk.BudgetKit, clock: ManualClock) -> None:
    made = []
    for i in range(5):
        clock.advance(seconds=1)
        made.append(await make(kit, 10 + i, subject_id=f"session_{i % 2}"))
    await kit.disable_budget(ORG, made[0].id)
    listed = await kit.list_budgets(ORG)
    assert [b.id for b in listed] == [b.id for b in reversed(made[1:])]
    with_disabled = await kit.list_budgets(ORG, include_disabled=True)
    assert len(with_disabled) == 5
    only = await kit.list_budgets(ORG, subject_type="session", subject_id="session_1")
    assert {b.id for b in only} == {made[1].id, made[3].id}
    page = await kit.list_budgets(ORG, limit=2, offset=1)
    assert [b.id for b in page] == [made[3].id, made[2].id]
    assert await kit.list_budgets(ORG, subject_type="user") == []


async def test_update_limit_moves_balance_and_resumes(kit: bk.BudgetKit) -> None:
    b = await make(kit, 10)
    scope = session_scope()
    await kit.debit(scope, {"usd": 12})
    assert (await kit.get_budget(ORG, b.id)).status == bk.BudgetStatus.EXHAUSTED
    updated = await kit.update_budget(ORG, b.id, limit=20)
    assert updated.balance == 8 and updated.status == bk.BudgetStatus.ACTIVE
    events = [e async for e in kit.events(ORG, follow=False)]
    assert [e.type for e in events][-1] == "budget.resumed"
    entries = await all_entries(kit, ORG, b.id)
    assert entries[0].meter_source == "limit_change" and entries[0].amount == -10
    await assert_invariant(kit, ORG, b.id, 10)


async def test_update_revalidates_soft_limit(kit: bk.BudgetKit) -> None:
    b = await make(kit, 10, soft_limit=8)
    with pytest.raises(bk.InvalidLimit, match="Soft limit must be between 0 and limit"):
        await kit.update_budget(ORG, b.id, limit=5)
    cleared = await kit.update_budget(ORG, b.id, soft_limit=None, metadata={"k": 1})
    assert cleared.soft_limit is None and cleared.metadata == {"k": 1}
    lowered = await kit.update_budget(ORG, b.id, limit=5)
    assert lowered.limit == 5 and lowered.balance == 5
    with pytest.raises(bk.InvalidInput, match="exhausted"):
        await kit.update_budget(ORG, b.id, status="exhausted")
    with pytest.raises(bk.InvalidStatus):
        await kit.update_budget(ORG, b.id, status="bogus")


async def test_operator_pause_and_disable(kit: bk.BudgetKit) -> None:
    b = await make(kit, 10)
    scope = session_scope()
    paused = await kit.update_budget(ORG, b.id, status="paused")
    assert paused.status == bk.BudgetStatus.PAUSED
    r = await kit.check(scope)
    assert r.action == "pause"
    assert (
        r.message == "Budget paused with 0.00 usd spent. Increase or resume the budget to continue."
    )
    await kit.debit(scope, {"usd": 1})
    assert (await kit.get_budget(ORG, b.id)).status == bk.BudgetStatus.PAUSED
    await kit.update_budget(ORG, b.id, status="disabled")
    assert (await kit.check(scope)).action == "continue"
    result = await kit.debit(scope, {"usd": 1})
    assert result.entries == []
    assert (await kit.get_budget(ORG, b.id)).balance == 9
    active = await kit.update_budget(ORG, b.id, status="active")
    assert active.status == bk.BudgetStatus.ACTIVE


async def test_top_up_resumes(kit: bk.BudgetKit) -> None:
    b = await make(kit, 10, soft_limit=8)
    scope = session_scope()
    await kit.debit(scope, {"usd": 11})
    topped = await kit.top_up(ORG, b.id, 2, description="refill")
    assert topped.balance == 1 and topped.status == bk.BudgetStatus.PAUSED  # spent 9 >= soft 8
    topped = await kit.top_up(ORG, b.id, 5)
    assert topped.balance == 6 and topped.status == bk.BudgetStatus.ACTIVE
    entry = (await kit.ledger(ORG, b.id, limit=1))[0]
    assert entry.amount == -5 and entry.meter_source == "manual" and entry.ref_type == "top_up"
    types = [e.type async for e in _events(kit)]
    assert types == ["budget.exhausted", "budget.paused", "budget.resumed"]
    await assert_invariant(kit, ORG, b.id, 10)


async def _events(kit: bk.BudgetKit) -> AsyncIterator[bk.BudgetEvent]:
    async for event in kit.events(ORG, follow=False):
        yield event


# -- rules, check, messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spend", "soft", "action"),
    [
        (20, None, "continue"),
        (79, None, "continue"),
        (80, None, "warn"),
        (85, None, "warn"),
        (100, None, "stop"),
        (105, None, "stop"),
        (85, 80, "pause"),
        (75, 80, "continue"),
        (100, 80, "stop"),
    ],
)
async def test_rule_examples(
    kit: bk.BudgetKit, spend: float, soft: float | None, action: str
) -> None:
    await make(kit, 100, soft_limit=soft)
    result = await kit.debit(session_scope(), {"usd": spend})
    assert result.check.action == action
    assert (await kit.check(session_scope())).action == action


async def test_messages_exact(kit: bk.BudgetKit) -> None:
    t = await make(kit, 50, currency="tokens", subject_id="session_t")
    r = (await kit.debit(session_scope("session_t"), {"tokens": 52})).check
    assert r.action == "stop" and r.budget_id == t.id and r.balance == -2 and r.currency == "tokens"
    assert r.message == (
        "Budget exhausted. 52.00 tokens spent exceeded the 50.00 tokens limit. "
        "Increase the budget to continue."
    )
    assert r.error_code == "budget_exhausted"
    assert r.model_dump(mode="json")["error_fields"] == {
        "budget_id": t.id,
        "currency": "tokens",
        "limit": 50.0,
        "spent": 52.0,
    }
    u = await make(kit, 10, soft_limit=8, subject_id="session_u")
    r = (await kit.debit(session_scope("session_u"), {"usd": 8})).check
    assert r.message == (
        "Budget paused. 8.00 usd spent reached the 8.00 usd soft limit. "
        "Increase or resume the budget to continue."
    )
    assert r.model_dump(mode="json")["error_fields"] == {
        "budget_id": u.id,
        "currency": "usd",
        "soft_limit": 8.0,
        "spent": 8.0,
    }
    await make(kit, 100, subject_id="session_w")
    r = (await kit.debit(session_scope("session_w"), {"usd": 85})).check
    assert r.message == "Budget running low. 15.00 usd remaining of 100.00 usd limit."
    assert r.error_code is None and r.error_fields is None


async def test_check_most_restrictive_and_tiebreak(kit: bk.BudgetKit) -> None:
    scope = session_scope(user_id="usr_1")
    s = await make(kit, 100)
    u = await make(kit, 1000, currency="tokens", subject_type="user", subject_id="usr_1")
    await kit.debit(scope, {"usd": 85, "tokens": 900})  # usd 15% left, tokens 10% left: both warn
    r = await kit.check(scope)
    assert r.action == "warn" and r.budget_id == u.id
    await kit.debit(scope, {"usd": 5})  # usd 10% left: tie, most specific wins
    assert (await kit.check(scope)).budget_id == s.id
    await kit.debit(scope, {"usd": 10})
    r = await kit.check(scope)
    assert r.action == "stop" and r.budget_id == s.id


async def test_check_tool(kit: bk.BudgetKit) -> None:
    empty = await kit.check_tool(session_scope())
    assert empty.model_dump(mode="json") == {
        "status": "no_budgets",
        "budgets": [],
        "hint": "No budgets are configured for this session. "
        "You can proceed without budget constraints.",
    }
    await make(kit, 100)
    full = await kit.check_tool(session_scope())
    assert full.status == "active" and full.hint == "100% of budget remaining."
    await kit.debit(session_scope(), {"usd": 48.8})
    assert (await kit.check_tool(session_scope())).hint == "51.2% of budget remaining."
    await kit.debit(session_scope(), {"usd": 11.2})
    tool = await kit.check_tool(session_scope())
    assert tool.hint == "40% of budget remaining. Consider prioritizing task completion."
    assert tool.budgets[0].percent_remaining == 40.0
    await kit.debit(session_scope(), {"usd": 30})
    tool = await kit.check_tool(session_scope())
    assert tool.status == "warning" and tool.budgets[0].status == "warning"
    assert tool.hint == "Budget running low. 10.00 usd remaining of 100.00 usd limit."


# -- debit across the hierarchy ---------------------------------------------------------------


async def test_hierarchy_debit_is_per_currency_and_pools_on_root(kit: bk.BudgetKit) -> None:
    root = await make(kit, 10, subject_id="session_root")
    child_own = await make(kit, 10, subject_id="session_child")
    user = await make(kit, 1000, currency="tokens", subject_type="user", subject_id="usr_1")
    org = await make(kit, 100, subject_type="organization", subject_id=ORG)
    scope = bk.Scope(
        organization_id=ORG,
        session_id="session_child",
        root_session_id="session_root",
        user_id="usr_1",
    )
    result = await kit.debit(
        scope,
        {"usd": 1.5, "tokens": 200},
        meter_source="llm_tokens",
        ref_type="llm_generation",
        ref_id="gen_1",
    )
    assert [e.budget_id for e in result.entries] == [root.id, user.id, org.id]
    assert all(e.session_id == "session_child" for e in result.entries)
    assert result.entries[0].ref_id == "gen_1" and result.entries[0].meter_source == "llm_tokens"
    assert (await kit.get_budget(ORG, root.id)).balance == 8.5
    assert (await kit.get_budget(ORG, child_own.id)).balance == 10
    assert (await kit.get_budget(ORG, user.id)).balance == 800
    assert (await kit.get_budget(ORG, org.id)).balance == 98.5


async def test_exact_decimal_books(kit: bk.BudgetKit) -> None:
    b = await make(kit, 1)
    for _ in range(10):
        await kit.debit(session_scope(), {"usd": 0.1})
    got = await kit.get_budget(ORG, b.id)
    assert got.balance == 0 and got.status == bk.BudgetStatus.EXHAUSTED
    await kit.top_up(ORG, b.id, 0.3)
    await kit.debit(session_scope(), {"usd": 0.1})
    await kit.debit(session_scope(), {"usd": 0.2})
    assert (await kit.get_budget(ORG, b.id)).balance == 0
    await assert_invariant(kit, ORG, b.id, 1)


async def test_paused_and_exhausted_are_still_charged(kit: bk.BudgetKit) -> None:
    b = await make(kit, 10, soft_limit=5)
    scope = session_scope()
    await kit.debit(scope, {"usd": 6})
    await kit.debit(scope, {"usd": 6})
    await kit.debit(scope, {"usd": 1})
    got = await kit.get_budget(ORG, b.id)
    assert got.balance == -3 and got.status == bk.BudgetStatus.EXHAUSTED
    assert len(await all_entries(kit, ORG, b.id)) == 3


async def test_events_are_edge_triggered(kit: bk.BudgetKit) -> None:
    b = await make(kit, 100, soft_limit=90)
    scope = session_scope()
    for _ in range(5):
        await kit.debit(scope, {"usd": 17})  # 17 34 51 68 85 spent → warn at 85
    await kit.debit(scope, {"usd": 2})  # 87: still warning zone, no new event
    await kit.debit(scope, {"usd": 3})  # 90: paused
    await kit.debit(scope, {"usd": 1})  # 91: still paused
    await kit.debit(scope, {"usd": 10})  # 101: exhausted
    await kit.debit(scope, {"usd": 1})
    events = [e async for e in _events(kit)]
    assert [e.type for e in events] == ["budget.warning", "budget.paused", "budget.exhausted"]
    warning = events[0]
    assert warning.data.budget_id == b.id and warning.data.balance == 15
    assert warning.data.message == "Budget running low. 15.00 usd remaining of 100.00 usd limit."
    assert warning.organization_id == ORG
    after = [e async for e in kit.events(ORG, after=events[0].id, follow=False)]
    assert [e.id for e in after] == [e.id for e in events[1:]]


async def test_resume_acknowledges_soft_limit(kit: bk.BudgetKit) -> None:
    b = await make(kit, 100, soft_limit=50, period={"type": "duration", "seconds": 3600})
    other = await make(kit, 100, soft_limit=10, subject_type="user", subject_id="usr_1")
    scope = session_scope(user_id="usr_1")
    await kit.debit(scope, {"usd": 60})
    assert (await kit.check(scope)).action == "pause"
    resumed = await kit.resume(scope)
    assert [r.id for r in resumed] == [b.id]
    assert (await kit.get_budget(ORG, other.id)).status == bk.BudgetStatus.PAUSED
    await kit.resume(scope, levels=("user",))
    r = await kit.debit(scope, {"usd": 20})  # spent 80: warning applies, no re-pause
    assert r.check.action == "warn"
    assert (await kit.get_budget(ORG, b.id)).status == bk.BudgetStatus.ACTIVE
    r = await kit.debit(scope, {"usd": 20})
    assert r.check.action == "stop"
    assert await kit.resume(scope) == []  # exhausted stays exhausted
    types = [e.type async for e in _events(kit)]
    assert types.count("budget.resumed") == 2


async def test_resume_ack_ends_with_period(kit: bk.BudgetKit, clock: ManualClock) -> None:
    await make(kit, 100, soft_limit=50, period={"type": "duration", "seconds": 3600})
    scope = session_scope()
    await kit.debit(scope, {"usd": 60})
    await kit.resume(scope)
    clock.advance(hours=1)
    r = await kit.debit(scope, {"usd": 60})
    assert r.check.action == "pause"


# -- periods ---------------------------------------------------------------------------------


async def test_duration_rollover_is_aligned(kit: bk.BudgetKit, clock: ManualClock) -> None:
    start = clock.now
    b = await make(kit, 10, period={"type": "rolling", "window": "5h"})
    assert b.period_started_at == start
    scope = session_scope()
    await kit.debit(scope, {"usd": 12})
    clock.advance(hours=11, minutes=30)
    got = await kit.get_budget(ORG, b.id)
    assert got.balance == 10 and got.status == bk.BudgetStatus.ACTIVE
    assert got.period_started_at == datetime(2026, 1, 15, 22, 0, tzinfo=UTC)
    entries = await all_entries(kit, ORG, b.id)
    assert entries[0].meter_source == "period_reset" and entries[0].amount == -12
    assert [e.type async for e in _events(kit)] == ["budget.exhausted", "budget.resumed"]
    await assert_invariant(kit, ORG, b.id, 10)


async def test_calendar_rollover(kit: bk.BudgetKit, clock: ManualClock) -> None:
    clock.set(datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC))
    b = await make(kit, 10, period={"type": "calendar", "unit": "month"})
    assert b.period_started_at == datetime(2024, 2, 1, tzinfo=UTC)
    await kit.debit(session_scope(), {"usd": 4})
    clock.set(datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC))
    got = (await kit.debit(session_scope(), {"usd": 1})).entries
    assert [e.meter_source for e in got] == ["period_reset", "manual"]
    budget = await kit.get_budget(ORG, b.id)
    assert budget.balance == 9 and budget.period_started_at == datetime(2024, 3, 1, tzinfo=UTC)


async def test_future_period_start_never_resets(kit: bk.BudgetKit, clock: ManualClock) -> None:
    b = await make(kit, 10, period={"type": "duration", "seconds": 60})
    await kit.debit(session_scope(), {"usd": 3})
    clock.advance(hours=-5)
    assert (await kit.get_budget(ORG, b.id)).balance == 7


async def test_server_clock_is_default(redis: Redis) -> None:
    kit = bk.BudgetKit(redis)
    b = await kit.create_budget(
        ORG, "session", "s", "usd", 1, period={"type": "calendar", "unit": "day"}
    )
    delta = abs((b.created_at - datetime.now(UTC)).total_seconds())
    assert delta < 60
    assert b.period_started_at is not None and b.period_started_at.hour == 0


# -- rejected calls change nothing ------------------------------------------------------------


async def test_rejected_calls_change_nothing(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: object
) -> None:
    b = await make(kit, 10, soft_limit=5)
    await kit.debit(session_scope(), {"usd": 1})
    before = await redis_snapshot(redis)  # type: ignore[operator]
    bad_calls = [
        kit.debit(session_scope(), {"usd": float("nan")}),
        kit.debit(session_scope(), {"usd": -1}),
        kit.debit(session_scope(), {"usd": "0.1 usd"}),
        kit.debit(session_scope(), {"USD": 1, "usd": 2}),
        kit.debit(session_scope(), {"usd": 2**53}),
        kit.top_up(ORG, b.id, 0),
        kit.top_up(ORG, b.id, 2**60),
        kit.update_budget(ORG, b.id, limit=4),
        kit.update_budget(ORG, b.id, soft_limit=11),
        kit.update_budget(ORG, b.id, warn_fraction=1.5),
        kit.update_budget(ORG, b.id, period={"type": "rolling", "window": "5y"}),
        kit.create_budget(ORG, "session", "s{x}", "usd", 1),
        kit.create_budget(ORG, "planet", "s", "usd", 1),
        kit.create_budget(ORG, "session", "s", "us d", 1),
    ]
    for call in bad_calls:
        with pytest.raises(bk.BudgetkitError):
            await call
    assert await redis_snapshot(redis) == before  # type: ignore[operator]


async def test_corrupt_budget_is_reported_and_nothing_written(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: object
) -> None:
    good = await make(kit, 10, subject_id="session_a")
    bad = await make(kit, 10, subject_type="user", subject_id="usr_1")
    await redis.hset(kit.keys.budget(ORG, bad.id), "bal", "12.5abc")
    before = await redis_snapshot(redis)  # type: ignore[operator]
    with pytest.raises(bk.CorruptState, match="bal"):
        await kit.debit(session_scope(user_id="usr_1"), {"usd": 1})
    assert await redis_snapshot(redis) == before  # type: ignore[operator]
    assert (await kit.get_budget(ORG, good.id)).balance == 10


# -- script runtime ---------------------------------------------------------------------------


async def test_library_lost_by_function_flush_is_reloaded(kit: bk.BudgetKit, redis: Redis) -> None:
    await make(kit, 10)
    await kit.debit(session_scope(), {"usd": 1})
    await redis.function_flush()
    await kit.debit(session_scope(), {"usd": 1})
    assert kit._runtime.reloads == 1
    assert (await kit.check(session_scope())).action == "continue"


# -- idempotency ------------------------------------------------------------------------------


async def test_idempotent_debit_replays(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: object, clock: ManualClock
) -> None:
    b = await make(kit, 10)
    scope = session_scope()
    first = await kit.debit(scope, {"usd": 2}, idempotency_key="call-1")
    state = await redis_snapshot(redis)  # type: ignore[operator]
    again = await kit.debit(scope, {"usd": 2}, idempotency_key="call-1")
    assert again.replayed and not first.replayed
    assert again.entries == first.entries and again.check == first.check
    assert await redis_snapshot(redis) == state  # type: ignore[operator]
    with pytest.raises(bk.IdempotencyConflict):
        await kit.debit(scope, {"usd": 3}, idempotency_key="call-1")
    assert await redis_snapshot(redis) == state  # type: ignore[operator]
    other_org = bk.Scope(organization_id="org_2", session_id="session_a")
    assert not (await kit.debit(other_org, {"usd": 3}, idempotency_key="call-1")).replayed
    clock.advance(hours=25)  # past the default 24 h record TTL, judged by the same clock
    assert not (await kit.debit(scope, {"usd": 2}, idempotency_key="call-1")).replayed
    assert (await kit.get_budget(ORG, b.id)).balance == 6


async def test_idempotent_top_up(kit: bk.BudgetKit) -> None:
    b = await make(kit, 10)
    await kit.top_up(ORG, b.id, 1, idempotency_key="t1")
    await kit.top_up(ORG, b.id, 1, idempotency_key="t1")
    assert (await kit.get_budget(ORG, b.id)).balance == 11
    with pytest.raises(bk.IdempotencyConflict):
        await kit.top_up(ORG, b.id, 2, idempotency_key="t1")
    await assert_invariant(kit, ORG, b.id, 10)


async def test_trim_history_caps_streams(kit: bk.BudgetKit) -> None:
    b = await make(kit, 10)
    for _ in range(12):
        await kit.debit(session_scope(), {"usd": 1})
    removed = await kit.trim_history(ORG, events_max_len=1, ledger_max_len=5)
    assert removed == 7 + 1  # 12 entries → 5; 2 events (warning, exhausted) → 1
    assert len(await all_entries(kit, ORG, b.id)) == 5
    assert len([e async for e in _events(kit)]) == 1
    with pytest.raises(bk.InvalidInput):
        await kit.trim_history(ORG, events_max_len=-1)
