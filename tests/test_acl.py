"""Least privilege (security issue §5): budgetkit under the Redis ACLs of deploy/acl/budgetkit.acl.

A private redis-server is started with ``--aclfile`` holding exactly the shipped file (both users
``off`` with no password, as shipped); the test enables them with a password, as docs/acl.md
tells operators to, and then:

* runs the whole worker path (check, check_tool, debit with an idempotency key, reserve + commit,
  reserve + release, resume, get, events) as ``budgetkit-worker`` and the admin path (create,
  update, disable, top_up, list, ledger, trim_history) as ``budgetkit-admin``;
* shows what the worker is refused: FLUSHALL, FLUSHDB, CONFIG, KEYS, SCAN, INFO, ACL, CLIENT,
  EVAL, EVALSHA, SCRIPT LOAD, FUNCTION FLUSH/DELETE, any key outside ``bk:*`` (directly,
  through a declared key, or through a key built inside a Lua function), and the admin-only
  operations — each refused before anything is written;
* states the limits of what an ACL can do (see docs/acl.md): the worker needs HSET & co. on
  ``bk:*`` for debit, so it can also run top_up/update or HSET a balance itself;
* a per-organization worker (``~bk:{org_a}:*``) cannot touch another organization at all.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio
from redis import exceptions as redis_errors

import budgetkit as bk

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent
ACL_FILE = ROOT / "deploy" / "acl" / "budgetkit.acl"
ACL_DOC = ROOT / "docs" / "acl.md"
WORKER = "budgetkit-worker"
ADMIN = "budgetkit-admin"
PASSWORD = {WORKER: "worker-test-pw", ADMIN: "admin-test-pw"}

Snapshot = dict[bytes, bytes]
SnapshotFn = Callable[[redis_asyncio.Redis], Awaitable[Snapshot]]


def acl_users() -> dict[str, list[str]]:
    """The users of the shipped ACL file: name -> rules."""
    users: dict[str, list[str]] = {}
    for line in ACL_FILE.read_text().splitlines():
        if line.strip():
            word, name, *rules = line.split()
            assert word == "user", line
            users[name] = rules
    return users


def glob_escape(text: str) -> str:
    """Escapes the ACL key-pattern glob characters of an organization id."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def tenant_rules(organization_id: str, prefix: str = "bk") -> list[str]:
    """The worker's rules restricted to one organization's keys (``~bk:{org}:*``)."""
    pattern = f"~{glob_escape(prefix)}:{{{glob_escape(organization_id)}}}:*"
    return [pattern if rule.startswith("~") else rule for rule in acl_users()[WORKER]]


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.host_port = url.removeprefix("redis://").split("/")[0]

    def user_url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@{self.host_port}/0"


@pytest.fixture
def server(redis_server_factory: Callable[..., Any], tmp_path: Path) -> Server:
    """A private server loaded with the shipped ACL file, as shipped (default user untouched:
    it plays the operator)."""
    aclfile = tmp_path / "users.acl"
    aclfile.write_text(ACL_FILE.read_text())
    return Server(redis_server_factory(extra_args=["--aclfile", str(aclfile)]).url)


@pytest_asyncio.fixture
async def root(server: Server) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(server.url)
    for user, password in PASSWORD.items():  # what docs/acl.md tells the operator to run
        await client.execute_command("ACL", "SETUSER", user, "on", f">{password}")
    await client.set("other:key", "not budgetkit's")
    yield client
    await client.aclose()


def kit_as(server: Server, user: str, password: str | None = None) -> bk.BudgetKit:
    return bk.BudgetKit.from_url(server.user_url(user, password or PASSWORD[user]))


async def first_event(kit: bk.BudgetKit, org: str, *, follow: bool) -> bk.BudgetEvent | None:
    stream = kit.events(org, follow=follow, block_ms=2000)
    try:
        return await anext(stream, None)
    finally:
        await stream.aclose()


def test_acl_file_is_documented() -> None:
    """docs/acl.md carries the shipped rules verbatim (aclfile lines and ACL SETUSER form)."""
    doc = ACL_DOC.read_text()
    users = acl_users()
    assert set(users) == {WORKER, ADMIN}
    for name, rules in users.items():
        assert f"user {name} {' '.join(rules)}" in doc
        assert f"ACL SETUSER {name} reset {' '.join(rules)}" in doc
        assert rules[:5] == ["off", "resetpass", "resetkeys", "resetchannels", "~bk:*"]
        assert "-@all" in rules and not any(
            r.startswith(("+@", "~*", "&", "allkeys")) for r in rules
        )
    worker, admin = set(users[WORKER]), set(users[ADMIN])
    assert worker < admin
    assert admin - worker == {"+scard", "+sadd", "+zrevrange", "+xrevrange", "+zrange", "+xtrim"}


async def test_worker_and_admin_paths_under_the_acl(
    server: Server,
    root: redis_asyncio.Redis,
    redis_snapshot: SnapshotFn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    listed = await root.acl_list()
    assert any(line.startswith(f"user {WORKER} on ") for line in map(str, listed)), listed
    admin = kit_as(server, ADMIN)
    worker = kit_as(server, WORKER)
    org = "org_a"
    scope = bk.Scope(org, session_id="s1", user_id="u1")
    ok_calls = 0
    try:
        # -- the admin path --------------------------------------------------------------
        session = await admin.create_budget(org, "session", "s1", "usd", 100, soft_limit=50)
        user = await admin.create_budget(org, "user", "u1", "usd", 1000)
        await admin.create_budget(org, "org", org, "tokens", 10_000)
        spare = await admin.create_budget(org, "session", "s2", "usd", 5)
        await admin.update_budget(org, session.id, warn_fraction=0.3, metadata={"team": "a"})
        await admin.disable_budget(org, spare.id)
        await admin.top_up(org, user.id, 1, idempotency_key="t1")
        assert len(await admin.list_budgets(org, include_disabled=True)) == 4
        assert (await admin.get_budget(org, user.id)).balance == 1001
        ok_calls += 9

        # -- the worker path -------------------------------------------------------------
        assert (await worker.check(scope)).action == "continue"
        assert (await worker.check_tool(scope)).status == "active"
        debited = await worker.debit(scope, {"usd": 55, "tokens": 10}, idempotency_key="d1")
        assert debited.check.action == "pause" and debited.events
        replay = await worker.debit(scope, {"usd": 55, "tokens": 10}, idempotency_key="d1")
        assert replay.replayed
        resumed = await worker.resume(scope)
        assert [b.id for b in resumed] == [session.id]
        hold = await worker.reserve(scope, {"usd": 5}, idempotency_key="r1")
        assert hold.granted
        committed = await worker.commit(hold, {"usd": 6})
        assert len(committed.entries) == 2
        hold = await worker.reserve(scope, {"usd": 5})
        assert hold.granted and len(await worker.release(hold)) == 2
        assert (await worker.get_budget(org, session.id)).balance == 100 - 55 - 6
        event = await first_event(worker, org, follow=False)
        assert event is not None and event.type == "budget.paused"
        assert await first_event(worker, org, follow=True) == event
        ok_calls += 12

        # -- the rest of the admin path (reads and trims what the worker wrote) ------------
        assert len(await admin.ledger(org, session.id)) == 2
        assert await admin.trim_history(org, events_max_len=1, ledger_max_len=100) >= 1
        ok_calls += 2

        # -- what the worker is refused ----------------------------------------------------
        before = await redis_snapshot(root)
        refused = await assert_refused(worker, admin, org, session.id)
        assert await redis_snapshot(root) == before, "a refused call wrote something"
        assert await root.get("other:key") == b"not budgetkit's"
    finally:
        await admin.aclose()
        await worker.aclose()
    with capsys.disabled():
        print(
            f"\nacl: {ok_calls} budgetkit calls succeeded under {WORKER}/{ADMIN}; "
            f"{sum(refused.values())} refusals {dict(refused)}"
        )


async def assert_refused(
    worker: bk.BudgetKit, admin: bk.BudgetKit, org: str, budget_id: str
) -> dict[str, int]:
    """Every dangerous or foreign operation is refused; returns counts by kind."""
    w, a = worker.redis, admin.redis
    counts = {"commands": 0, "foreign keys": 0, "lua": 0, "admin-only operations": 0}
    denied: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("commands", lambda: w.flushall()),
        ("commands", lambda: w.flushdb()),
        ("commands", lambda: w.config_get("*")),
        ("commands", lambda: w.config_set("appendonly", "no")),
        ("commands", lambda: w.keys("*")),
        ("commands", lambda: w.scan(0)),
        ("commands", lambda: w.info()),
        ("commands", lambda: w.acl_list()),
        ("commands", lambda: w.client_list()),
        ("commands", lambda: w.execute_command("CLIENT", "KILL", "TYPE", "normal")),
        ("commands", lambda: w.execute_command("CLUSTER", "RESET")),
        ("commands", lambda: w.script_flush()),
        ("commands", lambda: w.script_load("return 1")),
        ("commands", lambda: w.evalsha("0" * 40, 0)),
        ("commands", lambda: w.function_flush()),
        ("commands", lambda: w.execute_command("FUNCTION", "DELETE", "budgetkit_x")),
        ("commands", lambda: w.execute_command("SAVE")),
        ("commands", lambda: w.execute_command("SWAPDB", "0", "1")),
        ("commands", lambda: w.execute_command("SELECT", "1")),
        (
            "commands",
            lambda: w.execute_command("MIGRATE", "127.0.0.1", "1", "", "0", "1000", "KEYS", "bk:x"),
        ),
        ("commands", lambda: w.execute_command("SHUTDOWN", "NOSAVE")),
        ("commands", lambda: w.eval("return 1", 0)),
        ("commands", lambda: w.publish("bk:channel", "x")),
        ("commands", lambda: a.flushall()),
        ("commands", lambda: a.config_get("*")),
        ("commands", lambda: a.keys("*")),
        ("foreign keys", lambda: w.get("other:key")),
        ("foreign keys", lambda: w.set("other:key", "pwned")),
        ("foreign keys", lambda: w.delete("other:key")),
        ("foreign keys", lambda: w.hset("other:hash", "f", "v")),
        ("foreign keys", lambda: w.xread({"other:stream": "0-0"})),
        ("foreign keys", lambda: a.get("other:key")),
        ("foreign keys", lambda: a.set("bk_not_the_prefix", "x")),
    ]
    for kind, call in denied:
        with pytest.raises(redis_errors.NoPermissionError):
            await call()
        counts[kind] += 1

    # FUNCTION LOAD is granted (a server that lost the library): what it loads obeys the ACL.
    bodies = [
        "return redis.call('GET', keys[1])",
        "return redis.call('GET', 'other:key')",
        "return redis.call('SET', 'other:key', 'pwned')",
        "return redis.call('FLUSHALL')",
        "return redis.call('DEL', 'other:key')",
        "return redis.call('KEYS', '*')",
    ]
    registrations = "\n".join(
        f"redis.register_function('acl_probe_{i}', function(keys, args) {body} end)"
        for i, body in enumerate(bodies)
    )
    await w.execute_command("FUNCTION", "LOAD", "REPLACE", f"#!lua name=acl_probe\n{registrations}")
    with pytest.raises(redis_errors.NoPermissionError):
        await w.execute_command("FCALL", "acl_probe_0", 1, "other:key")
    counts["lua"] += 1
    for i in range(1, len(bodies)):
        with pytest.raises(redis_errors.ResponseError, match=r"(?i)permission|can't"):
            await w.execute_command("FCALL", f"acl_probe_{i}", 0)
        counts["lua"] += 1

    # Admin-only budgetkit operations: refused before their first write (an unavailable store
    # for the failure policy: PermissionDenied is a BudgetUnavailable).
    for call in (
        lambda: worker.create_budget(org, "session", "s9", "usd", 1),
        lambda: worker.list_budgets(org),
        lambda: worker.ledger(org, budget_id),
    ):
        with pytest.raises(bk.PermissionDenied, match=r"(?i)permission|can't"):
            await call()
        counts["admin-only operations"] += 1
    with pytest.raises(bk.PermissionDenied):
        await worker.trim_history(org, events_max_len=0)
    counts["admin-only operations"] += 1
    return counts


async def test_what_the_worker_acl_cannot_prevent(
    server: Server, root: redis_asyncio.Redis
) -> None:
    """Documented limits (docs/acl.md): Redis ACLs restrict commands and keys, not scripts. The
    worker needs HSET, XADD & co. on ``bk:*`` for debit, so it can also run the top_up and
    update scripts, or write a budget hash directly."""
    admin = kit_as(server, ADMIN)
    worker = kit_as(server, WORKER)
    try:
        budget = await admin.create_budget("org_a", "session", "s1", "usd", 10)
        assert (await worker.top_up("org_a", budget.id, 5)).balance == 15
        assert (await worker.update_budget("org_a", budget.id, limit=1000)).limit == 1000
        key = admin.keys.budget("org_a", budget.id)
        assert await worker.redis.hset(key, "bal", "1") == 0
    finally:
        await admin.aclose()
        await worker.aclose()


async def test_per_organization_worker(
    server: Server, root: redis_asyncio.Redis, redis_snapshot: SnapshotFn
) -> None:
    """A worker restricted to ``~bk:{org_a}:*`` runs org_a's worker path and is refused every
    key of another organization, before any write (also for an org id with glob characters)."""
    admin = kit_as(server, ADMIN)
    await root.execute_command("ACL", "SETUSER", "worker-org_a", "reset", *tenant_rules("org_a"))
    await root.execute_command("ACL", "SETUSER", "worker-org_a", "on", ">pw")
    await root.execute_command("ACL", "SETUSER", "worker-a*", "reset", *tenant_rules("a*"))
    await root.execute_command("ACL", "SETUSER", "worker-a*", "on", ">pw")
    tenant = bk.BudgetKit.from_url(f"redis://worker-org_a:pw@{server.host_port}/0")
    starred = bk.BudgetKit.from_url(f"redis://worker-a*:pw@{server.host_port}/0")
    try:
        for org in ("org_a", "org_b", "a*", "ab"):
            await admin.create_budget(org, "session", "s1", "usd", 10)
        own = bk.Scope("org_a", session_id="s1")
        assert (await tenant.debit(own, {"usd": 1})).entries
        assert (await tenant.check(own)).action == "continue"
        hold = await tenant.reserve(own, {"usd": 1})
        await tenant.commit(hold, {"usd": 1})
        before = await redis_snapshot(root)
        foreign = bk.Scope("org_b", session_id="s1")
        refused = await tenant.check(foreign)  # fails closed: never raises
        assert refused.action == "stop" and refused.error_code == "budget_unavailable"
        for call in (
            lambda: tenant.debit(foreign, {"usd": 1}),
            lambda: tenant.reserve(foreign, {"usd": 1}),
            lambda: starred.debit(bk.Scope("ab", session_id="s1"), {"usd": 1}),
        ):
            with pytest.raises(bk.PermissionDenied, match=r"(?i)permission"):
                await call()
        with pytest.raises(bk.PermissionDenied):
            await first_event(tenant, "org_b", follow=False)
        assert await redis_snapshot(root) == before
        assert (await starred.debit(bk.Scope("a*", session_id="s1"), {"usd": 1})).entries
    finally:
        for client in (admin, tenant, starred):
            await client.aclose()


async def test_worker_without_function_load(server: Server, root: redis_asyncio.Redis) -> None:
    rules = [r for r in acl_users()[WORKER] if r != "+function|load"]
    await root.execute_command("ACL", "SETUSER", "worker-noload", "reset", *rules)
    await root.execute_command("ACL", "SETUSER", "worker-noload", "on", ">pw")
    admin = kit_as(server, ADMIN)
    worker = bk.BudgetKit.from_url(f"redis://worker-noload:pw@{server.host_port}/0")
    try:
        await admin._runtime.ensure_loaded()  # the operator loads the library
        await admin.create_budget("org_a", "session", "s1", "usd", 10)
        result = await worker.check(bk.Scope("org_a", session_id="s1"))
        assert result.action == "continue"
    finally:
        await admin.aclose()
        await worker.aclose()


async def test_check_cache_as_the_worker(server: Server, root: redis_asyncio.Redis) -> None:
    """The shipped worker user runs the check cache (HELLO 3, CLIENT TRACKING, the heartbeat's
    SET): answers come from memory and follow another client's write; a worker confined to one
    organization gets correct answers, all by round trip (its heartbeat key is not its key)."""
    admin = kit_as(server, ADMIN)
    worker = kit_as(server, WORKER)
    await root.execute_command("ACL", "SETUSER", "worker-org_a", "reset", *tenant_rules("org_a"))
    await root.execute_command("ACL", "SETUSER", "worker-org_a", "on", ">pw")
    tenant = bk.BudgetKit.from_url(f"redis://worker-org_a:pw@{server.host_port}/0")
    scope = bk.Scope("org_a", session_id="s1")
    try:
        await admin.create_budget("org_a", "session", "s1", "usd", 10)
        await worker.enable_check_cache(heartbeat_ms=10)
        await tenant.enable_check_cache(heartbeat_ms=10)
        deadline = asyncio.get_running_loop().time() + 5
        while (stats := worker.check_cache_stats()) is not None and stats.hits == 0:
            assert (await worker.check(scope)).action == "continue"
            assert asyncio.get_running_loop().time() < deadline, stats
            await asyncio.sleep(0.01)
        await admin.debit(scope, {"usd": 10})  # another client exhausts the budget
        while (await worker.check(scope)).action != "stop":
            assert asyncio.get_running_loop().time() < deadline, "the write never showed"
            await asyncio.sleep(0.001)
        for _ in range(20):
            assert (await tenant.check(scope)).action == "stop"
        confined = tenant.check_cache_stats()
        assert confined is not None and confined.hits == 0 and not confined.serving, confined
    finally:
        for kit in (admin, worker, tenant):
            await kit.aclose()
