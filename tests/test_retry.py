"""A reply lost in flight (SPEC §4 idempotency, unavailable store), on the real Redis server.

A tiny TCP proxy sits between the client and a private redis-server. Armed, it forwards the next
FCALL to Redis, waits for Redis's complete reply (so the function *was* applied), then closes
both sockets instead of forwarding that reply (``times`` FCALLs in a row, or every one until
disarmed). SPEC §10: whoever sends the call again — redis-py's own retry, budgetkit's resend —
the mutation applies exactly once and returns the first reply; when every reply is lost the call
raises ``OutcomeUnknown`` (a ``BudgetUnavailable``) having applied exactly once, and a retry with
the same idempotency key returns the original outcome (``replayed=True``) and changes nothing.
The proxy parses RESP frames in both directions (RESP2 and
RESP3: redis-py pipelines HELLO / CLIENT SETINFO on connect), pairs each reply with its command,
and drops only the reply of the armed FCALL, so the FUNCTION LOAD of a first use passes through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from support import all_entries, assert_invariant, micros

import budgetkit as bk
import budgetkit.sync as bk_sync

pytestmark = pytest.mark.real

ORG = "org_retry"
USER = "usr_retry"
DROP_WAIT_S = 5.0
CRLF = b"\r\n"
LINE_TYPES = b"+-:_,(#"  # simple string, error, integer, null, double, big number, boolean
BLOB_TYPES = b"$!="  # bulk string, bulk error, verbatim string
ARRAY_TYPES = b"*~>"  # array, set, push
PAIR_TYPES = b"%|"  # map, attribute (n key/value pairs)


# -- RESP framing -------------------------------------------------------------------------------


def frame_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """End offset of the complete RESP2/RESP3 value starting at ``pos``; None if incomplete."""
    line_end = buf.find(CRLF, pos)
    if line_end < 0:
        return None
    kind, head = buf[pos : pos + 1], bytes(buf[pos + 1 : line_end])
    after = line_end + 2
    if kind in (b"", b"\r") or kind not in LINE_TYPES + BLOB_TYPES + ARRAY_TYPES + PAIR_TYPES:
        raise AssertionError(f"proxy: unexpected RESP type byte {kind!r} at {pos}")
    if kind in LINE_TYPES:
        return after
    count = int(head)
    if kind in BLOB_TYPES:
        if count < 0:  # RESP2 null bulk string
            return after
        end = after + count + 2
        return end if len(buf) >= end else None
    if count < 0:  # RESP2 null array
        return after
    elements = count * 2 if kind in PAIR_TYPES else count
    for _ in range(elements):
        nested = frame_end(buf, after)
        if nested is None:
            return None
        after = nested
    if kind == b"|":  # an attribute is followed by the value it describes
        return frame_end(buf, after)
    return after


def command_name(frame: bytes) -> bytes:
    """The upper-cased first bulk string of a command (``*N $len NAME ...``)."""
    assert frame[:1] == b"*", frame[:40]
    header_end = frame.index(CRLF) + 2
    length_end = frame.index(CRLF, header_end)
    length = int(frame[header_end + 1 : length_end])
    return bytes(frame[length_end + 2 : length_end + 2 + length]).upper()


def test_frame_end_handles_partial_and_nested_frames() -> None:
    reply = b"*3\r\n$8\r\nreplayed\r\n%1\r\n+a\r\n:1\r\n_\r\n"
    assert frame_end(reply) == len(reply)
    assert all(frame_end(reply[:cut]) is None for cut in range(len(reply)))
    assert frame_end(b"$-1\r\n+OK\r\n") == 5
    assert command_name(b"*2\r\n$7\r\nevalsha\r\n$1\r\nx\r\n") == b"EVALSHA"


# -- the proxy ----------------------------------------------------------------------------------


@dataclass
class Dropped:
    command: bytes
    reply: bytes


@dataclass
class DropProxy:
    """Forwards 127.0.0.1:<port> to Redis; armed, it swallows the reply of the next command
    named ``armed`` and closes both sides of that connection."""

    upstream_host: str
    upstream_port: int
    armed: bytes | None = None
    armed_times: int = 0  # how many more replies of ``armed`` to lose (-1: every one)
    connections: int = 0
    commands: list[bytes] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _drop_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    def arm(self, command: bytes = b"FCALL", times: int = 1) -> None:
        """Lose the replies of the next ``times`` commands named ``command`` (-1: all)."""
        assert self.armed is None, "already armed"
        self._drop_event.clear()
        self.armed, self.armed_times = command, times

    def disarm(self) -> None:
        self.armed, self.armed_times = None, 0

    async def wait_dropped(self) -> Dropped:
        await asyncio.wait_for(self._drop_event.wait(), DROP_WAIT_S)
        return self.dropped[-1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        server_writer: asyncio.StreamWriter | None = None
        try:
            server_reader, server_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
            # One entry per command sent on this connection: (name, swallow its reply?).
            pending: deque[tuple[bytes, bool]] = deque()
            upstream = asyncio.ensure_future(
                self._client_to_server(client_reader, server_writer, pending)
            )
            try:
                await self._server_to_client(server_reader, client_writer, pending)
            finally:
                upstream.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await upstream
        except ConnectionError:
            pass
        finally:
            writers = [w for w in (client_writer, server_writer) if w is not None]
            for writer in writers:  # close both before awaiting: a cancel cannot skip one
                writer.close()
            for writer in writers:
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async def _client_to_server(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: deque[tuple[bytes, bool]],
    ) -> None:
        buf = bytearray()
        while data := await reader.read(65536):
            buf += data
            while (end := frame_end(buf)) is not None:
                name = command_name(bytes(buf[:end]))
                del buf[:end]
                swallow = self.armed is not None and name == self.armed
                if swallow:
                    self.armed_times -= 1
                    if self.armed_times == 0:
                        self.disarm()
                self.commands.append(name)
                pending.append((name, swallow))
            writer.write(data)  # raw bytes, in order, as soon as they arrive
            await writer.drain()
        writer.write_eof()

    async def _server_to_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: deque[tuple[bytes, bool]],
    ) -> None:
        buf = bytearray()
        while data := await reader.read(65536):
            buf += data
            while (end := frame_end(buf)) is not None:
                frame = bytes(buf[:end])
                del buf[:end]
                if frame[:1] != b">":  # push messages answer no command
                    name, swallow = pending.popleft()
                    if swallow:
                        # Redis has executed the command and replied in full: lose the reply.
                        self.dropped.append(Dropped(name, frame))
                        self._drop_event.set()
                        return  # _serve closes both sockets
                writer.write(frame)
            await writer.drain()


# -- fixtures -----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def proxy(real_redis: Redis, redis_server_url: str) -> AsyncIterator[DropProxy]:
    parts = urlsplit(redis_server_url)
    if parts.scheme != "redis" or parts.hostname is None or parts.port is None:
        pytest.skip(f"the proxy needs a plain TCP redis:// url, not {redis_server_url!r}")
    instance = DropProxy(parts.hostname, parts.port)
    await instance.start()
    yield instance
    await instance.close()


@pytest_asyncio.fixture
async def kit(proxy: DropProxy) -> AsyncIterator[bk.BudgetKit]:
    """The client under test: every command goes through the proxy. Its library is loaded
    first, so the FCALL the proxy cuts is a real call (not a first-use "function not found")."""
    async with bk.BudgetKit.from_url(proxy.url) as client:
        await client._runtime.ensure_loaded()
        yield client


@pytest.fixture
def direct(real_redis: Redis) -> bk.BudgetKit:
    """A client straight to Redis, to set up and to inspect what was really applied."""
    return bk.BudgetKit(real_redis)


def scope() -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id="sess_r", user_id=USER)


async def budgets(direct: bk.BudgetKit) -> tuple[bk.Budget, bk.Budget]:
    user = await direct.create_budget(ORG, "user", USER, "usd", 100)
    org = await direct.create_budget(ORG, "org", ORG, "usd", 1000)
    return user, org


async def state(direct: bk.BudgetKit, budget: bk.Budget) -> tuple[int, int, int]:
    """(balance micros, available micros, ledger entries) of one budget, read directly."""
    got = await direct.get_budget(ORG, budget.id)
    tool = await direct.check_tool(scope())
    summaries = [s for s in tool.budgets if s.limit == got.limit]  # the limits differ
    assert len(summaries) == 1
    entries = await all_entries(direct, ORG, budget.id)
    return micros(got.balance), micros(summaries[0].balance), len(entries)


async def lose_reply(proxy: DropProxy, call: Awaitable[object]) -> bk.OutcomeUnknown:
    """Loses every reply of the call (and of its resends): OutcomeUnknown after Redis applied
    the script."""
    proxy.arm(times=-1)
    try:
        with pytest.raises(bk.OutcomeUnknown) as caught:
            await call
    finally:
        proxy.disarm()
    dropped = await proxy.wait_dropped()
    assert dropped.command == b"FCALL"
    assert dropped.reply[:1] == b"*", dropped.reply[:200]  # a script reply, not an error
    assert isinstance(caught.value, bk.BudgetUnavailable)
    return caught.value


# -- the operations -----------------------------------------------------------------------------


async def test_debit_retry_with_key_is_applied_once(
    kit: bk.BudgetKit, direct: bk.BudgetKit, proxy: DropProxy
) -> None:
    user, org = await budgets(direct)
    call = kit.debit(scope(), {"usd": 1.234567}, ref_id="gen_1", idempotency_key="debit-1")
    await lose_reply(proxy, call)
    assert await state(direct, user) == (micros(100 - 1.234567), micros(100 - 1.234567), 1)
    applied = await all_entries(direct, ORG, user.id)

    before = proxy.connections
    retry = await kit.debit(scope(), {"usd": 1.234567}, ref_id="gen_1", idempotency_key="debit-1")
    assert proxy.connections == before + 1  # the retry went over a fresh connection
    assert retry.replayed
    assert [e.id for e in retry.entries if e.budget_id == user.id] == [applied[0].id]
    assert await state(direct, user) == (micros(100 - 1.234567), micros(100 - 1.234567), 1)
    assert await state(direct, org) == (micros(1000 - 1.234567), micros(1000 - 1.234567), 1)
    await assert_invariant(direct, ORG, user.id, 100)
    await assert_invariant(direct, ORG, org.id, 1000)


async def test_top_up_retry_with_key_is_applied_once(
    kit: bk.BudgetKit, direct: bk.BudgetKit, proxy: DropProxy
) -> None:
    user, _ = await budgets(direct)
    await direct.debit(scope(), {"usd": 40})
    await lose_reply(proxy, kit.top_up(ORG, user.id, 15.5, idempotency_key="topup-1"))
    assert await state(direct, user) == (micros(75.5), micros(75.5), 2)

    retry = await kit.top_up(ORG, user.id, 15.5, idempotency_key="topup-1")
    # top_up returns the Budget as it was after the original call: credited once, not twice.
    assert micros(retry.balance) == micros(75.5)
    assert await state(direct, user) == (micros(75.5), micros(75.5), 2)
    entries = await all_entries(direct, ORG, user.id)
    assert [e.amount for e in entries] == [-15.5, 40]
    await assert_invariant(direct, ORG, user.id, 100)


async def test_reserve_retry_with_key_holds_once(
    kit: bk.BudgetKit, direct: bk.BudgetKit, proxy: DropProxy, real_redis: Redis
) -> None:
    user, org = await budgets(direct)
    await lose_reply(proxy, kit.reserve(scope(), {"usd": 30}, idempotency_key="hold-1"))
    assert await state(direct, user) == (micros(100), micros(70), 0)  # held, not charged
    held = await real_redis.hkeys(f"bk:{{{ORG}}}:ha:{user.id}")
    assert len(held) == 1

    retry = await kit.reserve(scope(), {"usd": 30}, idempotency_key="hold-1")
    assert retry.granted and retry.replayed
    assert retry.id == held[0].decode()  # the hold the lost call placed, not a second one
    assert await state(direct, user) == (micros(100), micros(70), 0)
    assert await real_redis.hkeys(f"bk:{{{ORG}}}:ha:{user.id}") == held
    assert await real_redis.zcard(f"bk:{{{ORG}}}:hz:{org.id}") == 1

    # The replayed reservation is the real one: committing it settles the original hold.
    await kit.commit(retry, {"usd": 12})
    assert await state(direct, user) == (micros(88), micros(88), 1)
    assert await real_redis.hlen(f"bk:{{{ORG}}}:ha:{user.id}") == 0


async def test_commit_retry_with_key_is_applied_once(
    kit: bk.BudgetKit, direct: bk.BudgetKit, proxy: DropProxy
) -> None:
    user, org = await budgets(direct)
    hold = await kit.reserve(scope(), {"usd": 20})
    assert hold.granted
    call = kit.commit(hold, {"usd": 17.000001}, ref_id="gen_2", idempotency_key="commit-1")
    await lose_reply(proxy, call)
    expected = (micros(100 - 17.000001), micros(100 - 17.000001), 1)
    assert await state(direct, user) == expected  # charged once, hold dropped

    retry = await kit.commit(hold, {"usd": 17.000001}, ref_id="gen_2", idempotency_key="commit-1")
    assert retry.replayed
    assert await state(direct, user) == expected
    assert await state(direct, org) == (micros(1000 - 17.000001), micros(1000 - 17.000001), 1)
    # Without the key the hold has resolved already: a blind retry is refused, not re-charged.
    with pytest.raises(bk.HoldNotFound):
        await kit.commit(hold, {"usd": 17.000001}, ref_id="gen_2")
    assert await state(direct, user) == expected
    await assert_invariant(direct, ORG, user.id, 100)


async def test_debit_without_key_is_unknown_but_applied_once(
    kit: bk.BudgetKit, direct: bk.BudgetKit, proxy: DropProxy
) -> None:
    user, _ = await budgets(direct)
    error = await lose_reply(proxy, kit.debit(scope(), {"usd": 2.5}))
    assert "debit" in str(error)
    # The caller cannot tell whether the debit happened; it did, exactly once.
    assert await state(direct, user) == (micros(97.5), micros(97.5), 1)

    # Without an idempotency key nothing identifies the retry as the same request, so retrying
    # double-charges: that is why the key exists (pass one and a retry replays instead).
    again = await kit.debit(scope(), {"usd": 2.5})
    assert not again.replayed
    assert await state(direct, user) == (micros(95), micros(95), 2)
    await assert_invariant(direct, ORG, user.id, 100)


# -- exactly once, whoever retries (SPEC §10) ---------------------------------------------------

#: How each construction path builds a kit on a url (sync paths are run in a worker thread).
PATHS = ("from_url", "plain_default_retry", "plain_custom_retry", "sync_from_url", "sync_plain")
CALLS_PER_PATH = 5


def plain_client(url: str, **kwargs: Any) -> Redis:
    """``redis.asyncio.Redis(host, port)`` as the README shows it: redis-py's default retry
    policy applies (``Redis.from_url`` has none)."""
    parts = urlsplit(url)
    return Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, **kwargs)


class PathKit:
    """One construction path's client, with an async face for the test either way."""

    def __init__(self, path: str, url: str) -> None:
        self.path = path
        self._async: bk.BudgetKit | None = None
        self._sync: bk_sync.BudgetKit | None = None
        if path == "from_url":
            self._async = bk.BudgetKit.from_url(url)
        elif path == "plain_default_retry":  # Redis(host, port) retries 10 times (redis-py 8)
            self._async = bk.BudgetKit(plain_client(url))
        elif path == "plain_custom_retry":
            retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), 3)
            self._async = bk.BudgetKit(plain_client(url, retry=retry))
        elif path == "sync_from_url":
            self._sync = bk_sync.BudgetKit.from_url(url)
        else:
            self._sync = bk_sync.BudgetKit(lambda: plain_client(url))

    async def run(self, method: str, *args: object, **kwargs: object) -> Any:
        if self._async is not None:
            return await getattr(self._async, method)(*args, **kwargs)
        assert self._sync is not None
        return await asyncio.to_thread(getattr(self._sync, method), *args, **kwargs)

    async def close(self) -> None:
        if self._async is not None:
            await self._async.aclose()
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)


@pytest_asyncio.fixture(params=PATHS)
async def path_kit(request: pytest.FixtureRequest, proxy: DropProxy) -> AsyncIterator[PathKit]:
    client = PathKit(request.param, proxy.url)
    yield client
    await client.close()


async def test_lost_replies_apply_each_call_exactly_once(
    path_kit: PathKit, direct: bk.BudgetKit, proxy: DropProxy
) -> None:
    """N debits, each losing its first reply: each returns normally, N entries, exact books."""
    user, org = await budgets(direct)
    await path_kit.run("check", scope())  # scripts loaded: the lost reply is a real call's
    for i in range(CALLS_PER_PATH):
        proxy.arm(times=1)
        result = await path_kit.run("debit", scope(), {"usd": 1.5}, ref_id=f"gen_{i}")
        assert not proxy.armed, "the reply was lost"
        assert not result.replayed  # a resend returns the first reply, as it was
        assert {e.budget_id for e in result.entries} == {user.id, org.id}
    assert len(proxy.dropped) == CALLS_PER_PATH
    spent = 1.5 * CALLS_PER_PATH
    assert await state(direct, user) == (
        micros(100 - spent),
        micros(100 - spent),
        CALLS_PER_PATH,
    )
    await assert_invariant(direct, ORG, user.id, 100)
    await assert_invariant(direct, ORG, org.id, 1000)


async def test_every_mutation_survives_a_lost_reply(
    path_kit: PathKit, direct: bk.BudgetKit, proxy: DropProxy, real_redis: Redis
) -> None:
    """create, top_up, update, reserve, commit, release and resume each lose one reply and
    still apply exactly once."""

    async def once(method: str, *args: object, **kwargs: object) -> Any:
        proxy.arm(times=1)
        result = await path_kit.run(method, *args, **kwargs)
        assert not proxy.armed, f"{method}: the reply was lost"
        return result

    await path_kit.run("check", scope())
    user = await once("create_budget", ORG, "user", USER, "usd", 100, soft_limit=10)
    listed = await direct.list_budgets(ORG)
    assert [b.id for b in listed] == [user.id]  # one budget, not two
    topped = await once("top_up", ORG, user.id, 5)
    assert topped.balance == 105
    updated = await once("update_budget", ORG, user.id, limit=110)
    assert (updated.limit, updated.balance) == (110, 115)
    hold = await once("reserve", scope(), {"usd": 20})
    assert hold.granted
    assert await real_redis.hlen(f"bk:{{{ORG}}}:ha:{user.id}") == 1
    committed = await once("commit", hold, {"usd": 20})
    assert committed.check.action == "pause"  # 15 spent (limit 110, balance 95) >= soft 10
    second = await once("reserve", scope(), {"usd": 1})
    assert not second.granted  # paused: denied, nothing held
    resumed = await once("resume", scope(), levels=["user"])
    assert [b.id for b in resumed] == [user.id]
    third = await once("reserve", scope(), {"usd": 3})
    released = await once("release", third)
    assert [b.id for b in released] == [user.id]
    assert await real_redis.hlen(f"bk:{{{ORG}}}:ha:{user.id}") == 0
    entries = await all_entries(direct, ORG, user.id)
    assert sorted(e.amount for e in entries) == [-10, -5, 20]  # limit change, top-up, commit
    await assert_invariant(direct, ORG, user.id, 100)


async def test_every_reply_lost_is_outcome_unknown_applied_once(
    path_kit: PathKit, direct: bk.BudgetKit, proxy: DropProxy
) -> None:
    """No reply ever arrives: the call gives up with OutcomeUnknown, applied exactly once."""
    user, _ = await budgets(direct)
    await path_kit.run("check", scope())
    proxy.arm(times=-1)
    try:
        with pytest.raises(bk.OutcomeUnknown):
            await path_kit.run("debit", scope(), {"usd": 2})
    finally:
        proxy.disarm()
    assert len(proxy.dropped) >= 2  # sent again at least once, every reply lost
    assert await state(direct, user) == (micros(98), micros(98), 1)
    await assert_invariant(direct, ORG, user.id, 100)
