"""Store errors are classified (SPEC §10, field trial issue 12 item 6): every error reply of Redis
that is not budgetkit's own is an unavailable store (SPEC §4), never an unclassified error.

On private real servers, one per kind of refusal — NOPERM (an ACL user without EVALSHA, or
without access to budgetkit's keys), WRONGPASS and NOAUTH (``requirepass``), a DB index out of
range (``/99`` in the URL), READONLY (a replica of the first server), OOM (a tiny ``maxmemory``
with ``noeviction``, filled until refused) — ``check`` and ``check_tool`` fail closed (stop,
``budget_unavailable``) or open (continue, flagged) and never raise; mutations raise
``BudgetUnavailable`` carrying the server's reply (``PermissionDenied`` for NOPERM), not
``OutcomeUnknown``; the refused calls change nothing. The refusing clients' clock is two hours
past the budget's one-hour period, so even ``check`` has something to write (a rollover):
READONLY and OOM refuse writes only, and a check with nothing to write is answered as usual.

Also: the CLI's one-line errors (exit 2) for them; the same classification of every other
reply redis-py can raise (MISCONF, BUSY, NOREPLICAS, LOADING, MASTERDOWN, CLUSTERDOWN, ...,
Redis 6's wrapped script errors); a Lua runtime error in a script stays a ScriptError; and a
blocking redis-py client given to the async client fails at construction.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import pytest_asyncio
import redis
import redis.asyncio as redis_asyncio
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser
from redis.cluster import RedisCluster as BlockingCluster

import budgetkit as bk
from budgetkit._core.client import UNAVAILABLE_CODE
from budgetkit._core.runtime import ReplyLost, ScriptRuntime, load_library, lua_dir, translate_error

ORG = "org_store"
SCOPE = bk.Scope(ORG, session_id="s1", user_id="u1")
T0 = datetime(2030, 1, 1, tzinfo=UTC)
PERIOD = {"type": "duration", "seconds": 3600}
LATER = T0 + timedelta(hours=2)  # past the period: a check rolls it over (a write)
PASSWORD = "store-errors-pw"
REPLICA_SYNC_S = 10.0
FILL_VALUE_BYTES = 64 * 1024
FILL_KEYS_MAX = 1000  # 64 MB: far above the 4 MB maxmemory
CLI_TIMEOUT_S = 60

Snapshot = Callable[[redis_asyncio.Redis], Awaitable[dict[bytes, bytes]]]


@dataclass
class Refusing:
    """A store that refuses budgetkit: the URL budgetkit is given, the server's reply it must
    report, the error type, and an operator's client of the refused store (for snapshots)."""

    url: str
    reply: str
    error: type[bk.BudgetUnavailable]
    root: redis_asyncio.Redis
    #: READONLY and OOM refuse writes only: a check is answered read-only (check_ro), its due
    #: rollover computed in memory and left for a call that can write it.
    check_answers: bool = False


async def seed(root: redis_asyncio.Redis) -> None:
    """The budgets of SCOPE, created at T0 with a one-hour period."""
    async with bk.BudgetKit(root, clock=lambda: T0) as kit:
        await kit.create_budget(ORG, "session", "s1", "usd", 10, period=PERIOD)
        await kit.create_budget(ORG, "user", "u1", "usd", 100, period=PERIOD)


def later_kit(url: str, **kwargs: Any) -> bk.BudgetKit:
    return bk.BudgetKit.from_url(url, clock=lambda: LATER, **kwargs)


# -- the refusing stores ---------------------------------------------------------------------


async def noperm_command(factory: Callable[..., Any]) -> Refusing:
    server = factory()
    root = redis_asyncio.Redis.from_url(server.url)
    await seed(root)
    rules = ["on", f">{PASSWORD}", "~*", "+@all", "-fcall", "-fcall_ro", "-evalsha", "-eval"]
    await root.execute_command("ACL", "SETUSER", "noeval", *rules)
    url = f"redis://noeval:{PASSWORD}@127.0.0.1:{server.port}/0"
    return Refusing(url, "NOPERM", bk.PermissionDenied, root)


async def noperm_keys(factory: Callable[..., Any]) -> Refusing:
    server = factory()
    root = redis_asyncio.Redis.from_url(server.url)
    await seed(root)
    await root.execute_command(
        "ACL", "SETUSER", "nokeys", "on", f">{PASSWORD}", "~other:*", "+@all"
    )
    url = f"redis://nokeys:{PASSWORD}@127.0.0.1:{server.port}/0"
    return Refusing(url, "NOPERM", bk.PermissionDenied, root)


async def wrongpass(factory: Callable[..., Any]) -> Refusing:
    server = factory()
    root = redis_asyncio.Redis.from_url(server.url)
    await seed(root)
    await root.config_set("requirepass", PASSWORD)  # after start: the start waits for a PONG
    await root.aclose()
    root = redis_asyncio.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
    return Refusing(
        f"redis://:wrong@127.0.0.1:{server.port}/0", "WRONGPASS", bk.BudgetUnavailable, root
    )


async def noauth(factory: Callable[..., Any]) -> Refusing:
    refusing = await wrongpass(factory)
    url = refusing.url.replace(":wrong@", "")
    return Refusing(url, "NOAUTH", bk.BudgetUnavailable, refusing.root)


async def db_index(factory: Callable[..., Any]) -> Refusing:
    server = factory()
    root = redis_asyncio.Redis.from_url(server.url)
    await seed(root)
    url = f"redis://127.0.0.1:{server.port}/99"
    return Refusing(url, "DB index is out of range", bk.BudgetUnavailable, root)


async def readonly(factory: Callable[..., Any]) -> Refusing:
    primary = factory(extra_args=["--repl-diskless-sync-delay", "0"])  # sync at once
    root = redis_asyncio.Redis.from_url(primary.url)
    await seed(root)
    await root.aclose()
    replica = factory(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    client = redis_asyncio.Redis.from_url(replica.url)
    deadline = time.monotonic() + REPLICA_SYNC_S
    while (await client.info("replication")).get("master_link_status") != "up" or not (
        await client.dbsize()
    ):
        assert time.monotonic() < deadline, "the replica did not sync"
        await asyncio.sleep(0.05)
    return Refusing(replica.url, "READONLY", bk.BudgetUnavailable, client, check_answers=True)


async def oom(factory: Callable[..., Any]) -> Refusing:
    server = factory(extra_args=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])
    root = redis_asyncio.Redis.from_url(server.url)
    await seed(root)
    for i in range(FILL_KEYS_MAX):
        try:
            await root.set(f"fill:{i}", b"x" * FILL_VALUE_BYTES)
        except redis_errors.OutOfMemoryError:
            break
    else:
        pytest.fail(f"{FILL_KEYS_MAX} values of {FILL_VALUE_BYTES} bytes fit in 4 MB")
    return Refusing(server.url, "OOM", bk.BudgetUnavailable, root, check_answers=True)


KINDS: dict[str, Callable[[Callable[..., Any]], Awaitable[Refusing]]] = {
    "noperm_command": noperm_command,
    "noperm_keys": noperm_keys,
    "wrongpass": wrongpass,
    "noauth": noauth,
    "db_index": db_index,
    "readonly": readonly,
    "oom": oom,
}


@pytest_asyncio.fixture(params=sorted(KINDS))
async def refusing(
    request: pytest.FixtureRequest, redis_server_factory: Callable[..., Any]
) -> AsyncIterator[Refusing]:
    store = await KINDS[request.param](redis_server_factory)
    try:
        yield store
    finally:
        await store.root.aclose()


# -- real servers ----------------------------------------------------------------------------


@pytest.mark.real
async def test_a_refusing_store_is_an_unavailable_store(
    refusing: Refusing, redis_snapshot: Snapshot
) -> None:
    before = await redis_snapshot(refusing.root)
    closed = later_kit(refusing.url)
    opened = later_kit(refusing.url, failure_policy="fail_open")
    try:
        if refusing.check_answers:
            for kit in (closed, opened):
                result = await kit.check(SCOPE)
                assert result.action == "continue" and not result.fail_open, result
                assert (await kit.check_tool(SCOPE)).budgets[0].balance == 10  # rolled over
            assert closed.counters.fail_closed == 0 and opened.counters.fail_open == 0
        else:
            result = await closed.check(SCOPE)
            assert result.action == "stop" and result.error_code == UNAVAILABLE_CODE, result
            assert (await closed.check_tool(SCOPE)).status == "exhausted"
            result = await opened.check(SCOPE)
            assert result.action == "continue" and result.fail_open, result
            assert (await opened.check_tool(SCOPE)).status == "active"
            assert closed.counters.fail_closed == 2 and opened.counters.fail_open == 2
        mutations: list[Callable[[], Awaitable[Any]]] = [
            lambda: closed.debit(SCOPE, {"usd": 1}),
            lambda: closed.debit(SCOPE, {"usd": 1}, idempotency_key="k1"),
            lambda: closed.create_budget(ORG, "session", "s2", "usd", 1),
            lambda: closed.reserve(SCOPE, {"usd": 1}),
        ]
        for mutation in mutations:
            with pytest.raises(bk.BudgetUnavailable) as raised:
                await mutation()
            error = raised.value
            assert type(error) is refusing.error, error  # never OutcomeUnknown: not applied
            assert refusing.reply in str(error) and error.server_error is not None
            assert refusing.reply in error.server_error
        assert closed.counters.outcome_unknown == 0
    finally:
        await closed.aclose()
        await opened.aclose()
    assert await redis_snapshot(refusing.root) == before, "a refused call wrote something"


@pytest.mark.real
async def test_read_only_refusals_leave_checks_that_write_nothing_alone(
    redis_server_factory: Callable[..., Any],
) -> None:
    """READONLY and OOM refuse writes: a check with no period to roll over still answers."""
    for make in (readonly, oom):
        store = await make(redis_server_factory)
        async with bk.BudgetKit.from_url(store.url, clock=lambda: T0) as kit:
            result = await kit.check(SCOPE)
            assert result.action == "continue" and not result.fail_open
            with pytest.raises(bk.BudgetUnavailable, match=store.reply):
                await kit.debit(SCOPE, {"usd": 1})
        await store.root.aclose()


@pytest.mark.real
async def test_permission_denied_is_catchable_by_its_name(
    redis_server_factory: Callable[..., Any],
) -> None:
    store = await noperm_keys(redis_server_factory)
    async with later_kit(store.url) as kit:
        with pytest.raises(bk.PermissionDenied, match="NOPERM"):
            await kit.debit(SCOPE, {"usd": 1})
        stream = kit.events(ORG)
        with pytest.raises(bk.PermissionDenied, match="NOPERM"):  # a plain read (XREAD)
            await anext(stream)
        await stream.aclose()
    await store.root.aclose()
    assert issubclass(bk.PermissionDenied, bk.BudgetUnavailable)


@pytest.mark.real
async def test_batched_calls_are_classified_too(redis_server_factory: Callable[..., Any]) -> None:
    """Concurrent calls share a pipeline (budgetkit._core.batching): a refusal during its connection
    handshake (SELECT) reaches every caller classified."""
    store = await db_index(redis_server_factory)
    async with later_kit(store.url) as kit:
        results = await asyncio.gather(
            kit.check(SCOPE),
            *(kit.debit(SCOPE, {"usd": 1}) for _ in range(4)),
            kit.check(SCOPE),
            return_exceptions=True,
        )
    await store.root.aclose()
    checks, debits = [results[0], results[-1]], results[1:-1]
    for check in checks:
        assert isinstance(check, bk.BudgetCheckResult) and check.error_code == UNAVAILABLE_CODE
    for debit in debits:
        assert type(debit) is bk.BudgetUnavailable and "DB index is out of range" in str(debit)


async def test_a_lua_runtime_error_stays_a_script_error(
    redis: redis_asyncio.Redis, tmp_path: Path
) -> None:
    """A bug in an operation (here one added next to the prelude) is a ScriptError, on both
    tiers."""
    (tmp_path / "_lib.lua").write_text((lua_dir() / "_lib.lua").read_text())
    (tmp_path / "bug.lua").write_text("local missing = nil\nreturn missing < 1\n")
    runtime = ScriptRuntime(redis, load_library(tmp_path))
    with pytest.raises(bk.ScriptError, match="attempt to compare"):
        await runtime.call("bug", [], [])


# -- fakeredis -------------------------------------------------------------------------------


async def test_db_index_out_of_range_on_fakeredis() -> None:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7, 0)), db=99)
    for policy, action in (("fail_closed", "stop"), ("fail_open", "continue")):
        kit = bk.BudgetKit(client, failure_policy=policy)  # type: ignore[arg-type]
        result = await kit.check(SCOPE)
        assert result.action == action and result.fail_open == (policy == "fail_open")
    with pytest.raises(bk.BudgetUnavailable, match="DB index is out of range") as raised:
        await kit.create_budget(ORG, "session", "s1", "usd", 1)
    assert type(raised.value) is bk.BudgetUnavailable
    await client.aclose()


# -- the CLI ---------------------------------------------------------------------------------


def run_cli(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """``python -m budgetkit.cli`` for each command, concurrently; results in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "budgetkit.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    outs = []
    for proc, args in zip(procs, commands, strict=True):
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
        outs.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    return outs


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
    line = out.stderr.strip()
    assert line.startswith("budgetkit: ") and "unexpected" not in line, line
    return line


@pytest.mark.real
async def test_cli_names_the_refusal(redis_server_factory: Callable[..., Any]) -> None:
    bad_db = await db_index(redis_server_factory)
    noperm = await noperm_command(redis_server_factory)
    scope = ["--org", ORG, "--session", "s1"]
    outs = run_cli(
        ["check", *scope, "--redis-url", bad_db.url],
        ["check", *scope, "--json", "--redis-url", bad_db.url],
        ["debit", *scope, "--amount", "usd=1", "--redis-url", bad_db.url],
        ["check", *scope, "--redis-url", noperm.url],
        ["debit", *scope, "--amount", "usd=1", "--redis-url", noperm.url],
    )
    for out in outs[:3]:
        line = one_line_error(out)
        assert "refused the command (ERR DB index is out of range)" in line, line
        assert "redis://HOST:PORT/0" in line, line
    for out in outs[3:]:
        line = one_line_error(out)
        assert "NOPERM" in line and "fcall" in line and "docs/acl.md" in line, line
        assert PASSWORD not in line, line  # the URL is redacted
    for store in (bad_db, noperm):
        await store.root.aclose()


# -- every other reply, as redis-py raises it ------------------------------------------------


def reply(text: str) -> redis_errors.RedisError:
    """The exception redis-py raises for the error reply ``text`` (its own parser)."""
    error: redis_errors.RedisError = BaseParser.parse_error(text)
    return error


SCRIPT_SUFFIX = " script: 94ba0bd306b60f8e686659451fb12ee5b5f385c5, on @user_script:394."
FUNCTION_SUFFIX = " script: budgetkit_53d1fb0c619e_debit, on @user_function:412."
REFUSALS = [
    "NOPERM this user has no permissions to run the 'evalsha' command",
    "NOPERM this user has no permissions to access one of the keys used as arguments",
    "ERR The user executing the script can't access at least one of the keys mentioned in the "
    "command arguments" + SCRIPT_SUFFIX,  # Redis 7.0: a key the script built
    "ERR ACL failure in script: User w has no permissions to run the 'xadd' command"
    + SCRIPT_SUFFIX,  # Redis 7.2
    "WRONGPASS invalid username-password pair or user is disabled.",
    "NOAUTH Authentication required.",
    "ERR DB index is out of range",
    "ERR max number of clients reached",
    "ERR unknown command 'EVALSHA_RO', with args beginning with: ",
    "LOADING Redis is loading the dataset in memory",
    "READONLY You can't write against a read only replica." + SCRIPT_SUFFIX,
    "OOM command not allowed when used memory > 'maxmemory'." + SCRIPT_SUFFIX,
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "CLUSTERDOWN The cluster is down",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist "
    "to disk.",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "NOREPLICAS Not enough good replicas to write." + SCRIPT_SUFFIX,
    "NOPERM this user has no permissions to run the 'fcall' command",
    "ERR ACL failure in script: User w has no permissions to run the 'xadd' command"
    + FUNCTION_SUFFIX,
    "OOM command not allowed when used memory > 'maxmemory'.",  # FCALL refused up front
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "MOVED 3999 127.0.0.1:6381",
    "ERR Error running script (call to f_94ba): @user_script:394: @user_script: 394: -READONLY "
    "You can't write against a read only replica.",  # Redis 6 wraps the inner reply
]
BUGS = [
    "ERR user_script:1: attempt to compare nil with number" + SCRIPT_SUFFIX,
    "ERR Wrong number of args calling Redis command from script" + SCRIPT_SUFFIX,
    "ERR user_function:1: attempt to compare nil with number" + FUNCTION_SUFFIX,
    "ERR Wrong number of args calling Redis command from script" + FUNCTION_SUFFIX,
    "ERR Error running script (call to f_e9b6): @user_script:?: attempt to compare nil with "
    "number",  # Redis 6, fakeredis
    "ERR Wrong number of args calling Redis command from script",  # fakeredis
    "WRONGTYPE Operation against a key holding the wrong kind of value" + SCRIPT_SUFFIX,
    "CROSSSLOT Keys in request don't hash to the same slot",
    "BK_UNKNOWN_CODE something",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_every_refusal_is_an_unavailable_store(text: str) -> None:
    error = translate_error("debit", reply(text))
    assert isinstance(error, bk.BudgetUnavailable) and not isinstance(error, bk.OutcomeUnknown)
    assert error.server_error is not None and error.server_error in str(error)
    assert text.split(" ", 1)[1].split(" script:", 1)[0] in error.server_error
    acl = "NOPERM" in text or "ACL" in text or "can't access" in text
    assert isinstance(error, bk.PermissionDenied) == acl, error


@pytest.mark.parametrize("text", BUGS)
def test_a_bug_is_a_script_error(text: str) -> None:
    assert type(translate_error("debit", reply(text))) is bk.ScriptError


def test_budgetkit_replies_keep_their_types() -> None:
    for text, expected in (
        ("BK_NOT_FOUND bk:{o}:b:x", bk.BudgetNotFound),
        ("ERR user_script:12: BK_HOLD_EXPIRED hold_1" + SCRIPT_SUFFIX, bk.HoldExpired),
        ("user_function:12: BK_HOLD_EXPIRED hold_1" + FUNCTION_SUFFIX, bk.HoldExpired),
        (
            "ERR Error running script (call to f_1): @user_script:?: BK_LIMIT bad\nstack",
            bk.InvalidLimit,
        ),
    ):
        error = translate_error("debit", reply(text))
        assert type(error) is expected and "script" not in str(error) and "\n" not in str(error)


def test_connection_errors_without_a_reply_keep_their_rule() -> None:
    """No reply from the server: not sent → BudgetUnavailable; lost after sending → unknown."""
    refused = redis_errors.ConnectionError(
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    )
    error = translate_error("debit", refused)
    assert type(error) is bk.BudgetUnavailable and error.server_error is None
    lost = translate_error("debit", redis_errors.ConnectionError("Connection closed by server."))
    assert type(lost) is ReplyLost  # an OutcomeUnknown that budgetkit sends again
    late = translate_error("debit", redis_errors.TimeoutError("Timeout reading from socket"))
    assert type(late) is bk.OutcomeUnknown  # a stuck server: not sent again
    cluster = redis_errors.RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: x"
    )
    assert type(translate_error("check", cluster)) is bk.BudgetUnavailable


async def test_an_unreachable_cluster_fails_closed() -> None:
    """redis-py raises RedisClusterException (not a RedisError) when no startup node answers."""
    port = _closed_port()
    async with bk.BudgetKit.from_url(f"redis+cluster://127.0.0.1:{port}") as kit:
        kit._runtime.failover_retry_s = 0.0  # no failover to wait for
        result = await kit.check(SCOPE)
        assert result.action == "stop" and result.error_code == UNAVAILABLE_CODE
        with pytest.raises(bk.BudgetUnavailable):
            await kit.debit(SCOPE, {"usd": 1})


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a blocking client -----------------------------------------------------------------------


async def test_a_blocking_client_fails_at_construction() -> None:
    blocking = redis.Redis()
    cluster = BlockingCluster.__new__(BlockingCluster)  # its __init__ would connect
    fake = fakeredis.FakeRedis()
    for client, wanted in (
        (blocking, "redis.asyncio.Redis"),
        (fake, "redis.asyncio.Redis"),
        (cluster, "redis.asyncio.cluster.RedisCluster"),
    ):
        with pytest.raises(bk.InvalidInput) as raised:
            bk.BudgetKit(client)  # type: ignore[arg-type]
        message = str(raised.value)
        assert wanted in message and "budgetkit.sync.BudgetKit" in message, message
        assert type(client).__name__ in message, message
    primary = redis_asyncio.Redis()
    with pytest.raises(bk.InvalidInput, match="read_replica is a blocking"):
        bk.BudgetKit(primary, read_replica=blocking)  # type: ignore[arg-type]
    await primary.aclose()
    blocking.close()
    fake.close()
