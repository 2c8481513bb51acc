"""What the first field trial hit (SPEC §2 rounding, §10 refinements), on both tiers and both
clients. Each test reproduces one reported problem; the commit that added it says it failed
before the fix."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from support import ManualClock, all_entries, assert_invariant, build_kit, close_kit

import budgetkit as bk
from budgetkit._core.models import format_timestamp

ORG = "org_ft"
KitFactory = Callable[..., Awaitable[Any]]


@pytest_asyncio.fixture(params=["async", "sync"])
async def kit_of(request: pytest.FixtureRequest, redis: Redis) -> AsyncIterator[KitFactory]:
    """``await kit_of(**constructor_keywords)``: a kit of the parametrized kind on ``redis``."""
    made: list[Any] = []

    async def factory(**kwargs: Any) -> Any:
        kwargs.setdefault("clock", ManualClock())
        made.append(build_kit(request.param, redis, **kwargs))
        return made[-1]

    yield factory
    for kit in made:
        await close_kit(kit)


@pytest_asyncio.fixture
async def kit(kit_of: KitFactory) -> Any:
    return await kit_of()


def scope(**kw: str) -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id=kw.pop("session_id", "session_1"), **kw)


async def usd(kit: Any, limit: float, subject: str = "session", sid: str = "session_1", **kw: Any):
    return await kit.create_budget(
        ORG, subject, ORG if subject == "org" else sid, "usd", limit, **kw
    )


# -- item 3: computed float costs are rounded (SPEC §2) -------------------------------------------


async def test_computed_float_costs_round_half_up(kit: Any) -> None:
    b = await usd(kit, 10)
    charged = [1500 * 3e-6, 0.1 + 0.2, Decimal("0.0001125"), "0.25", 0.0000004]
    for amount in charged:
        await kit.debit(scope(), {"usd": amount})
    entries = await all_entries(kit, ORG, b.id)
    # 0.0045000000000000005 -> 0.0045; 0.30000000000000004 -> 0.3; 0.0001125 -> 0.000113 (half
    # up); "0.25" a numeric string; 0.0000004 rounds to 0: no entry at all.
    assert sorted(round(e.amount * 1_000_000) for e in entries) == [113, 4500, 250_000, 300_000]
    await assert_invariant(kit, ORG, b.id, 10)


async def test_limits_that_round_to_zero_are_invalid(kit: Any) -> None:
    with pytest.raises(bk.InvalidLimit, match="Limit must be positive"):
        await usd(kit, 0.0000004)
    with pytest.raises(bk.InvalidLimit, match="Soft limit must be between 0 and limit"):
        await usd(kit, 1, soft_limit=0.0000004)
    assert await kit.list_budgets(ORG) == []


async def test_strict_amounts_reject_more_than_six_decimals(
    kit_of: KitFactory, redis: Redis, redis_snapshot: Any
) -> None:
    kit = await kit_of(amounts="strict")
    await usd(kit, 10)
    before = await redis_snapshot(redis)
    with pytest.raises(bk.InvalidAmount, match="more than 6 decimal places"):
        await kit.debit(scope(), {"usd": 1500 * 3e-6})
    with pytest.raises(bk.InvalidAmount, match="more than 6 decimal places"):
        await usd(kit, 1.0000001)
    assert await redis_snapshot(redis) == before
    result = await kit.debit(scope(), {"usd": 0.0045})  # exact amounts pass
    assert [e.amount for e in result.entries] == [0.0045]
    with pytest.raises(bk.InvalidInput, match="amounts must be 'round' or 'strict'"):
        await kit_of(amounts="lenient")


# -- item 2: a hold reads as a hold, not as spend (SPEC §10) -------------------------------------


async def test_hold_is_named_in_the_check_and_never_stops_its_holder(kit: Any) -> None:
    b = await usd(kit, 1)
    await kit.debit(scope(), {"usd": 0.9})
    hold = await kit.reserve(scope(), {"usd": 0.1})
    assert hold.granted
    # The reservation's own check is the scope without this hold: 0.10 available of 1.00.
    assert hold.check.action == "warn"
    assert hold.check.message == "Budget running low. 0.10 usd remaining of 1.00 usd limit."
    check = await kit.check(scope())
    assert check.action == "stop"
    assert check.message == (
        "Budget exhausted. 0.90 usd spent and 0.10 usd reserved reached the 1.00 usd limit. "
        "Increase the budget to continue."
    )
    assert check.error_fields is not None
    assert (check.error_fields.spent, check.error_fields.held) == (0.9, 0.1)
    assert json.loads(check.model_dump_json())["error_fields"]["held"] == 0.1
    assert (await kit.get_budget(ORG, b.id)).status == bk.BudgetStatus.ACTIVE  # stored status
    assert [x.status for x in await kit.list_budgets(ORG)] == [bk.BudgetStatus.ACTIVE]
    await kit.release(hold)
    after = await kit.check(scope())
    assert after.action == "warn" and after.error_fields is None


async def test_pause_text_names_holds_and_exceeded_counts_them(kit: Any) -> None:
    await usd(kit, 10, soft_limit=5)
    await kit.debit(scope(), {"usd": 4})
    hold = await kit.reserve(scope(), {"usd": 1.5})
    assert hold.granted and hold.check.action == "continue"  # 4 spent, soft 5: not its own hold
    check = await kit.check(scope())
    assert check.action == "pause"
    assert check.message == (
        "Budget paused. 4.00 usd spent and 1.50 usd reserved exceeded the 5.00 usd soft limit. "
        "Increase or resume the budget to continue."
    )
    assert check.error_fields is not None and check.error_fields.held == 1.5


async def test_denied_reservation_on_a_paused_budget_says_pause(kit: Any) -> None:
    b = await usd(kit, 1)
    await kit.debit(scope(), {"usd": 0.9})
    assert (await kit.reserve(scope(), {"usd": 0.1})).granted  # nothing available now
    await kit.update_budget(ORG, b.id, status="paused")  # operator pause
    denied = await kit.reserve(scope(), {"usd": 0.05})
    assert not denied.granted
    assert (denied.check.action, denied.check.error_code) == ("pause", "budget_paused")
    assert denied.check.message == (
        "Budget paused with 0.90 usd spent and 0.10 usd reserved. "
        "Increase or resume the budget to continue."
    )


# -- item 5: unbudgeted spend is visible (SPEC §10) ----------------------------------------------


async def test_unbudgeted_currencies_are_listed(kit: Any) -> None:
    await usd(kit, 10)
    result = await kit.debit(scope(), {"usd": 0.5, "dollars": 0.01, "tokens": 0})
    assert result.unbudgeted == ["dollars"]  # a misspelt currency; a zero amount is not listed
    nobody = await kit.debit(scope(session_id="session_other"), {"usd": 1})
    assert nobody.unbudgeted == ["usd"] and nobody.entries == []
    assert (await kit.check(scope(session_id="session_other"))).action == "continue"  # default


async def test_required_budgets_stop_a_scope_without_one(
    kit_of: KitFactory, redis: Redis, redis_snapshot: Any
) -> None:
    kit = await kit_of(require_budgets=True)
    await usd(kit, 10)
    assert (await kit.check(scope())).action == "continue"
    bare = scope(session_id="session_bare")
    check = await kit.check(bare)
    assert (check.action, check.error_code, check.message) == (
        "stop",
        "no_budget",
        "No budget covers this scope.",
    )
    before = await redis_snapshot(redis)
    hold = await kit.reserve(bare, {"usd": 1})
    assert not hold.granted and hold.check.error_code == "no_budget"
    assert await redis_snapshot(redis) == before  # the denial wrote nothing
    tool = await kit.check_tool(bare)
    assert (tool.status, tool.hint) == ("no_budgets", "No budget covers this scope.")


# -- item 7: setup scripts do not double budgets -------------------------------------------------


async def test_create_budget_with_an_idempotency_key_creates_once(
    kit: Any, redis: Redis, redis_snapshot: Any
) -> None:
    first = await usd(kit, 10, idempotency_key="setup-1")
    await kit.debit(scope(), {"usd": 2})
    again = await usd(kit, 10, idempotency_key="setup-1")
    assert again.id == first.id
    assert again.balance == 8  # the budget as it is now
    assert [b.id for b in await kit.list_budgets(ORG)] == [first.id]
    before = await redis_snapshot(redis)
    with pytest.raises(bk.IdempotencyConflict):
        await usd(kit, 20, idempotency_key="setup-1")
    assert await redis_snapshot(redis) == before
    other = await usd(kit, 10, idempotency_key="setup-2")
    assert other.id != first.id


# -- item 8: the check says which level decided --------------------------------------------------


async def test_check_names_the_deciding_level_and_resume_takes_it(kit: Any) -> None:
    await usd(kit, 100)
    await kit.create_budget(ORG, "user", "usr_1", "usd", 10, soft_limit=2)
    s = scope(user_id="usr_1")
    await kit.debit(s, {"usd": 3})
    check = await kit.check(s)
    assert check.action == "pause"
    assert (check.subject_type, check.subject_id) == (bk.BudgetSubjectType.USER, "usr_1")
    assert "subject_type" not in check.model_dump_json()  # seed JSON unchanged
    assert await kit.resume(s) == []  # the default level (session) has nothing paused
    resumed = await kit.resume(s, levels=[check.subject_type])
    assert [b.subject_id for b in resumed] == ["usr_1"]
    assert (await kit.check(s)).action == "continue"


# -- item 9: types a user trips on ---------------------------------------------------------------


async def test_ledger_entries_carry_their_currency(kit: Any) -> None:
    u = await usd(kit, 10)
    t = await kit.create_budget(ORG, "session", "session_1", "tokens", 1000)
    result = await kit.debit(scope(), {"usd": 1, "tokens": 50})
    assert {e.budget_id: e.currency for e in result.entries} == {u.id: "usd", t.id: "tokens"}
    page = await kit.ledger(ORG, t.id)
    assert [e.currency for e in page] == ["tokens"]
    assert "currency" not in page[0].model_dump_json()  # the seed's LedgerEntry has none


async def test_reservation_amounts_are_in_currency_units_and_json_is_like_the_others(
    kit: Any,
) -> None:
    await usd(kit, 10)
    hold = await kit.reserve(scope(), {"usd": 0.05}, ttl_seconds=30)
    assert hold.amounts == {"usd": 0.05}
    data = json.loads(hold.model_dump_json())
    assert data["scope"] == {"organization_id": ORG, "session_id": "session_1"}
    assert data["expires_at"] == format_timestamp(hold.expires_at)  # as every model writes it


def test_internal_parameters_are_not_public() -> None:
    for method in (bk.BudgetKit.debit, bk.BudgetKit.commit):
        assert "unpriced_currencies" not in inspect.signature(method).parameters


# -- item 10: messages that point the right way --------------------------------------------------


async def test_unknown_budget_is_named_by_id_and_organization(kit: Any) -> None:
    missing = "bdgt_01933b5a000070008000000000000001"
    for call in (
        kit.get_budget(ORG, missing),
        kit.top_up(ORG, missing, 1),
        kit.update_budget(ORG, missing, limit=1),
        kit.ledger(ORG, missing),
    ):
        with pytest.raises(bk.BudgetNotFound) as caught:
            await call
        assert str(caught.value) == f"budget {missing} not found in organization {ORG}"


async def test_bad_ttl_is_invalid_input_not_an_amount(kit: Any) -> None:
    await usd(kit, 10)
    for ttl in (0, -1, "soon", 8 * 86_400):
        with pytest.raises(bk.InvalidInput, match="ttl_seconds must be a number of seconds") as e:
            await kit.reserve(scope(), {"usd": 1}, ttl_seconds=ttl)
        assert not isinstance(e.value, bk.InvalidAmount)


# -- item 11: whose session budget applies -------------------------------------------------------


async def test_child_session_tool_hint_names_the_root_session(kit: Any) -> None:
    await usd(kit, 10, sid="session_root")
    child = bk.Scope(
        organization_id=ORG, session_id="session_child", root_session_id="session_root"
    )
    tool = await kit.check_tool(child)
    assert tool.hint is not None
    assert tool.hint.endswith(
        "Session budgets are those of the root session session_root, shared by its child sessions."
    )
    plain = await kit.check_tool(bk.Scope(organization_id=ORG, session_id="session_root"))
    assert plain.hint == "100% of budget remaining."
