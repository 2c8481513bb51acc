"""Tenant isolation (security issue §4): no crafted id lets a caller read or change another
organization's data or leave its own hash tag.

The victim organization ``org_b`` has budgets at three levels, a ledger, events, an idempotency
record and an outstanding hold. Attackers call every public method with their own organization
id (plain, or crafted: containing the victim's name, ``:``, key fragments such as ``b:<victim
budget id>``, lookalike unicode) and the victim's budget ids, hold ids, subject names, idempotency
keys and stream ids. Ids that could break a hash tag (braces, whitespace, control characters) are
rejected before anything is written. Checks, on both tiers:

* reads of the victim's data from another organization are "not found" or empty;
* the victim's keys are byte-for-byte unchanged (DUMP) after every attacker call;
* every key an attacker call writes carries the attacker's hash tag (``bk:{<attacker>}:``), and
  every key of one organization maps to that organization's Redis Cluster slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.crc import key_slot
from support import ManualClock

import budgetkit as bk

VICTIM = "org_b"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

Snapshot = dict[bytes, bytes]
SnapshotFn = Callable[[Redis], Awaitable[Snapshot]]


async def fast_snapshot(client: Redis) -> Snapshot:
    """The DUMP of every key in two round trips (SCAN, one pipeline of DUMPs): the same map as
    the ``redis_snapshot`` fixture, which the tests below check it against."""
    keys = sorted([key async for key in client.scan_iter(count=10_000)])
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.dump(key)
    return {k: v for k, v in zip(keys, await pipe.execute(), strict=True) if v is not None}


@dataclass
class Victim:
    scope: bk.Scope
    budgets: list[bk.Budget]
    hold: bk.Reservation
    event_ids: list[str]


@pytest_asyncio.fixture
async def kit(redis: Redis) -> AsyncIterator[bk.BudgetKit]:
    yield bk.BudgetKit(redis, clock=ManualClock(NOW))


async def make_victim(kit: bk.BudgetKit) -> Victim:
    scope = bk.Scope(VICTIM, session_id="s1", user_id="u1")
    budgets = [
        await kit.create_budget(VICTIM, "session", "s1", "usd", 100, soft_limit=90),
        await kit.create_budget(VICTIM, "user", "u1", "usd", 1000),
        await kit.create_budget(VICTIM, "org", VICTIM, "tokens", 500),
    ]
    await kit.debit(scope, {"usd": 85, "tokens": 450}, idempotency_key="key-1")
    hold = await kit.reserve(scope, {"usd": 1}, ttl_seconds=60, idempotency_key="key-2")
    assert hold.granted
    events = [e async for e in kit.events(VICTIM, follow=False)]
    assert events, "the victim's debit emitted events"
    return Victim(scope, budgets, hold, [e.id for e in events if e.id])


def tag(org: str) -> bytes:
    return f"bk:{{{org}}}:".encode()


def own_keys(snapshot: Snapshot, org: str) -> Snapshot:
    return {k: v for k, v in snapshot.items() if k.startswith(tag(org))}


#: Attacker organizations: valid ids built to look like, contain or extend the victim's keys.
def crafted_orgs(victim: Victim) -> list[str]:
    bid = victim.budgets[0].id
    return [
        "org_a",
        f"{VICTIM}:",
        f"{VICTIM}:b:{bid}",
        f"{VICTIM}:s:session:s1",
        f"{VICTIM}:events",
        f"{VICTIM}:h:{victim.hold.id}",
        f"{VICTIM}:idem:debit:key-1",
        f"x:{VICTIM}",
        "org_",
        "ORG_B",
        "\u043erg_b",  # Cyrillic o: a different organization that looks the same
        "*",
        "org_b*",
        "?rg_b",
        "[o]rg_b",
        "bk:",
    ]


#: Organization ids that would break out of a hash tag or alias a key: all rejected.
BREAKOUT_ORGS = [
    "o}:x",
    "o:{x}",
    "{org_b}",
    "org_b}",
    "org_b}:b:x",
    "x}:{org_b",
    "org_b\n",
    "org_b\r\nFLUSHALL",
    "org_b ",
    "org_b\x00",
    "org_b\u200b",
    "",
    "x" * 257,
]


async def attacker_calls(
    kit: bk.BudgetKit, org: str, victim: Victim
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Every public method, called as ``org`` with the victim's names and ids."""
    bid = victim.budgets[0].id
    scope = bk.Scope(org, session_id="s1", user_id="u1")
    lookalike = bk.Scope(org, session_id=f"{VICTIM}:s:session:s1", user_id=f"{VICTIM}:u1")
    forged = bk.Reservation(
        granted=True, id=victim.hold.id, scope=scope, check=bk.BudgetCheckResult(action="continue")
    )

    async def collect_events(after: str | None) -> Any:
        stream = kit.events(org, after, follow=False)
        try:
            return [e async for e in stream]
        finally:
            await stream.aclose()

    return {
        "get_budget": lambda: kit.get_budget(org, bid),
        "ledger": lambda: kit.ledger(org, bid),
        "update_budget": lambda: kit.update_budget(org, bid, limit=1_000_000, status="active"),
        "disable_budget": lambda: kit.disable_budget(org, bid),
        "top_up": lambda: kit.top_up(org, bid, 1_000),
        "list_budgets": lambda: kit.list_budgets(org, include_disabled=True),
        "list_by_victim_subject": lambda: kit.list_budgets(org, "session", "s1"),
        "check": lambda: kit.check(scope),
        "check_lookalike": lambda: kit.check(lookalike),
        "check_tool": lambda: kit.check_tool(scope),
        "debit": lambda: kit.debit(scope, {"usd": 50, "tokens": 50}),
        "debit_same_idempotency_key": lambda: kit.debit(
            scope, {"usd": 85, "tokens": 450}, idempotency_key="key-1"
        ),
        "debit_lookalike": lambda: kit.debit(lookalike, {"usd": 50}),
        "reserve": lambda: kit.reserve(scope, {"usd": 1}, idempotency_key="key-2"),
        "commit_forged_hold": lambda: kit.commit(forged, {"usd": 5}),
        "release_forged_hold": lambda: kit.release(forged),
        "resume": lambda: kit.resume(scope, levels=("session", "user", "org")),
        "create_budget": lambda: kit.create_budget(org, "session", "s1", "usd", 5),
        "events_from_start": lambda: collect_events(None),
        "events_after_victim_id": lambda: collect_events(victim.event_ids[0]),
        "trim_history": lambda: kit.trim_history(org, events_max_len=0, ledger_max_len=0),
    }


#: What an attacker call may legitimately return: nothing of the victim's.
NOT_FOUND = (bk.BudgetNotFound, bk.HoldNotFound)


def assert_nothing_of_victim(org: str, name: str, result: object, victim: Victim) -> None:
    text = repr(result).replace(org, "<caller>")  # crafted org names quote victim ids
    for budget in victim.budgets:
        assert budget.id not in text, (org, name, "leaked a victim budget")
    assert victim.hold.id not in text, (org, name, "leaked the victim's hold")
    for event_id in victim.event_ids:
        assert event_id not in text, (org, name, "leaked a victim event")


async def test_crafted_orgs_cannot_touch_the_victim(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: SnapshotFn, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = await make_victim(kit)
    full = await redis_snapshot(redis)
    assert await fast_snapshot(redis) == full
    victim_state = own_keys(full, VICTIM)
    calls = 0
    for org in crafted_orgs(victim):
        for name, call in (await attacker_calls(kit, org, victim)).items():
            before = await fast_snapshot(redis)
            try:
                result: object = await call()
            except NOT_FOUND:
                result = None
            after = await fast_snapshot(redis)
            calls += 1
            assert_nothing_of_victim(org, name, result, victim)
            assert own_keys(after, VICTIM) == victim_state, (org, name, "changed the victim")
            changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
            outside = sorted(k for k in changed if not k.startswith(tag(org)))
            assert outside == [], (org, name, "wrote outside its hash tag", outside)
            if name == "check":
                assert isinstance(result, bk.BudgetCheckResult)
                assert result.budget_id is None or result.budget_id.startswith("bdgt_")
            if name in ("get_budget", "ledger", "update_budget", "top_up", "disable_budget"):
                assert result is None, (org, name, "found the victim's budget")
            if name in ("commit_forged_hold", "release_forged_hold"):
                assert result is None, (org, name, "resolved the victim's hold")
        extra = [key for key in await fast_snapshot(redis) if key not in full]
        if extra:  # drop this attacker's keys: the next one starts from the victim alone
            await redis.delete(*extra)
    assert own_keys(await redis_snapshot(redis), VICTIM) == victim_state
    # The victim still works exactly as before: its hold commits, its ledger is whole.
    committed = await kit.commit(victim.hold, {"usd": 1})
    assert committed.entries and {e.budget_id for e in committed.entries} <= {
        b.id for b in victim.budgets
    }
    for budget in victim.budgets:
        got = await kit.get_budget(VICTIM, budget.id)
        total = sum(round(e.amount * 1_000_000) for e in await kit.ledger(VICTIM, budget.id))
        assert round(got.balance * 1_000_000) == round(budget.limit * 1_000_000) - total
    with capsys.disabled():
        print(
            f"\nisolation: {len(crafted_orgs(victim))} crafted organizations x "
            f"{calls // len(crafted_orgs(victim))} calls = {calls} attacker calls, "
            "victim changed 0 times, writes outside the caller's hash tag 0"
        )


async def test_breakout_ids_are_rejected_before_any_write(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: SnapshotFn
) -> None:
    """Ids that could close the hash tag or alias a key are InvalidIdentifier, for the org and
    every other caller-supplied id (subject, session, user, idempotency key)."""
    victim = await make_victim(kit)
    before = await redis_snapshot(redis)
    bid = victim.budgets[0].id
    tried = 0
    for bad in BREAKOUT_ORGS:
        attempts: list[Callable[[], Awaitable[Any]]] = [
            lambda bad=bad: kit.get_budget(bad, bid),
            lambda bad=bad: kit.top_up(bad, bid, 1),
            lambda bad=bad: kit.update_budget(bad, bid, limit=1),
            lambda bad=bad: kit.list_budgets(bad),
            lambda bad=bad: kit.ledger(bad, bid),
            lambda bad=bad: kit.trim_history(bad, events_max_len=0),
            lambda bad=bad: kit.create_budget(bad, "session", "s1", "usd", 1),
            lambda bad=bad: kit.create_budget(VICTIM, "session", bad, "usd", 1),
            lambda bad=bad: kit.create_budget(VICTIM, "org", bad, "usd", 1),
            lambda bad=bad: kit.list_budgets(VICTIM, "session", bad),
            lambda bad=bad: kit.check(bk.Scope(bad, session_id="s1")),
            lambda bad=bad: kit.check(bk.Scope(VICTIM, session_id=bad)),
            lambda bad=bad: kit.debit(bk.Scope(VICTIM, user_id=bad), {"usd": 1}),
            lambda bad=bad: kit.debit(victim.scope, {"usd": 1}, idempotency_key=bad),
            lambda bad=bad: kit.reserve(bk.Scope(VICTIM, root_session_id=bad), {"usd": 1}),
        ]
        for attempt in attempts:
            with pytest.raises(bk.InvalidIdentifier):
                await attempt()
            tried += 1
        with pytest.raises(bk.InvalidIdentifier):
            [e async for e in kit.events(bad, follow=False)]
        tried += 1
    assert await redis_snapshot(redis) == before
    assert tried == len(BREAKOUT_ORGS) * 16


async def test_forged_reservations(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: SnapshotFn
) -> None:
    """A hold resolves only in the organization that made it: another org's hold id under my
    scope, or my hold id under another org's scope, is HoldNotFound and changes nothing."""
    victim = await make_victim(kit)
    mine = bk.Scope("org_a", session_id="s1")
    await kit.create_budget("org_a", "session", "s1", "usd", 100)
    my_hold = await kit.reserve(mine, {"usd": 2})
    assert my_hold.granted and my_hold.id and victim.hold.id
    ok = bk.BudgetCheckResult(action="continue")
    forged = [
        bk.Reservation(granted=True, id=victim.hold.id, scope=mine, check=ok),
        bk.Reservation(granted=True, id=my_hold.id, scope=victim.scope, check=ok),
        bk.Reservation(
            granted=True,
            id=victim.hold.id,
            scope=bk.Scope(f"{VICTIM}:h:{victim.hold.id}", session_id="s1"),
            check=ok,
        ),
    ]
    before = await redis_snapshot(redis)
    for hold in forged:
        with pytest.raises(bk.HoldNotFound):
            await kit.commit(hold, {"usd": 50})
        with pytest.raises(bk.HoldNotFound):
            await kit.release(hold)
    assert await redis_snapshot(redis) == before
    # Both real holds still resolve, each in its own organization.
    assert [b.organization_id for b in await kit.release(my_hold)] == ["org_a"]
    assert {b.organization_id for b in await kit.release(victim.hold)} == {VICTIM}


async def test_subject_ids_with_colons_do_not_alias(kit: bk.BudgetKit) -> None:
    """Inside one organization, a subject id containing ':' or another level's name is its own
    subject: ``user 'session:s1'`` never sees ``session 's1'``'s budget."""
    session = await kit.create_budget("org_a", "session", "s1", "usd", 10)
    await kit.create_budget("org_a", "user", "session:s1", "usd", 20)
    await kit.create_budget("org_a", "app", "s1:x", "usd", 30)
    result = await kit.check(bk.Scope("org_a", user_id="session:s1"))
    tool = await kit.check_tool(bk.Scope("org_a", user_id="session:s1"))
    assert [s.limit for s in tool.budgets] == [20]
    assert result.action == "continue"
    listed = await kit.list_budgets("org_a", subject_type="session", subject_id="s1")
    assert [b.id for b in listed] == [session.id]
    assert await kit.list_budgets("org_a", subject_type="user", subject_id="s1") == []
    tool = await kit.check_tool(bk.Scope("org_a", app_id="s1"))
    assert tool.status == "no_budgets"


async def test_every_key_carries_its_org_hash_tag(
    kit: bk.BudgetKit, redis: Redis, redis_snapshot: SnapshotFn
) -> None:
    """After a full workload in several organizations (crafted names included), every key is
    ``bk:{<org>}:...`` for one of them and lies in that organization's Cluster slot."""
    orgs = ["org_a", VICTIM, f"{VICTIM}:b:x", "ü:x", "🙂"]
    for org in orgs:
        scope = bk.Scope(org, session_id="s1", user_id="u1")
        session = await kit.create_budget(org, "session", "s1", "usd", 10, soft_limit=8)
        await kit.create_budget(org, "org", org, "usd", 100)
        await kit.debit(scope, {"usd": 6}, idempotency_key="k")
        hold = await kit.reserve(scope, {"usd": 1}, idempotency_key="h")
        await kit.commit(hold, {"usd": 1}, idempotency_key="c")
        await kit.resume(scope)
        await kit.top_up(org, session.id, 1, idempotency_key="t")
        await kit.update_budget(org, session.id, limit=20)
    keys = list(await redis_snapshot(redis))
    assert keys
    for key in keys:
        owners = [org for org in orgs if key.startswith(tag(org))]
        assert len(owners) == 1, key
        assert key_slot(key) == key_slot(owners[0].encode()), key
