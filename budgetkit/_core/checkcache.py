"""The check cache: ``check`` and ``check_tool`` answered from memory, kept exact by Redis's own
invalidations (``kit.enable_check_cache()``; issue 17).

What it stores: per scope, the reply of the last round trip that showed the scope's budgets (a
``check``, or the kit's own ``debit`` / ``reserve`` / ``commit``, whose replies carry the same
snapshots), with the keys it depends on (the scope's subject index sets and its budgets'
hashes) and ``valid_until_ms``, computed by the script: the earliest end of a current period or
expiry of a hold among those budgets. A cached answer is the uncached one: the same reply goes
through the same rules (``BudgetKit._check_reply``).

Why it is exact:

- **Invalidations.** A dedicated RESP3 connection (``Tracker``) runs ``CLIENT TRACKING ON BCAST
  PREFIX P:{org}:`` for every organization the cache serves: Redis pushes the name of every key
  written under those prefixes. Every pushed budget or subject key gets the next value of a
  sequence (``_touched``); an entry is served only while none of its keys was pushed after the
  call that filled it was *sent* (its ``Ticket``), so a write that raced the round trip is never
  served as current.
- **Own writes.** The kit's own mutations drop the entries of the keys they touch before they
  are sent and again when their reply comes back (``drop``), so a check after an acknowledged
  write never sees the state before it (read-your-writes), even when the ack beats the push.
- **Time.** An entry is served only while the clock is before its ``valid_until_ms``: a period
  rollover or a hold expiry is never answered from memory. The clock is the kit's (tests) or the
  server's, estimated from the filling reply's ``now`` plus the local time elapsed since that
  call was sent (never behind the server's).
- **A heartbeat lease.** Every ``heartbeat_ms`` the cache writes a key under a prefix of its own
  and expects its push back; while the last one that came back was sent more than
  ``LEASE_BEATS`` heartbeats ago (a stalled event loop, a silently dead connection, late
  pushes), nothing is served. Pushes arrive in order on
  one connection, so when a new heartbeat's push is read every invalidation before it was too.
- **Resets.** A broken tracking connection, a flush push (``invalidate`` with no keys) or an
  error clears everything and starts a new epoch; tickets of an old epoch fill nothing; serving
  resumes once tracking is re-established and a heartbeat came back.

Other clients' writes are visible within the invalidation latency (the push's trip), and never
later than the lease: it runs from when the last heartbeat that came back was *sent*, so pushes
that all arrive late (a slow network, a loaded reader) stop the serving instead of extending
it. One server or a Sentinel-managed primary (after a failover, heartbeats stop coming back
to a tracking connection left on the demoted server: after RECONNECT_LEASES leases it connects
again through the Sentinel pool, which reaches the new primary, and everything cached was
dropped); not a Cluster, and never a read replica's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict
from redis import exceptions as redis_errors
from redis._parsers.resp3 import _AsyncRESP3Parser

from budgetkit._core.errors import BudgetUnavailable, InvalidInput
from budgetkit._core.keys import KEY_SUFFIXES, Keyspace

if TYPE_CHECKING:
    from budgetkit._core.keys import ScopeKeys
    from budgetkit._core.replies import Reply

log = logging.getLogger("budgetkit")

HEARTBEAT_MS_MIN: Final = 5
HEARTBEAT_MS_MAX: Final = 10_000
#: The cache serves while the last heartbeat came back less than this many heartbeats ago.
LEASE_BEATS: Final = 2
#: Entries and remembered keys kept before everything starts over (memory bound).
ENTRIES_MAX: Final = 100_000
TOUCHED_MAX: Final = 200_000
RECONNECT_DELAY_FIRST_S: Final = 0.05
RECONNECT_DELAY_MAX_S: Final = 1.0
COMMAND_TIMEOUT_S: Final = 5.0
STOP_WAIT_S: Final = 2.0
#: Leases without a heartbeat back (tracking connected) before the tracker connects again.
RECONNECT_LEASES: Final = 5
#: Heartbeats sent and not back yet, at most (then everything starts over).
BEATS_PENDING_MAX: Final = 1000
#: The key segments a cached reply depends on: budget hashes and subject index sets.
DEPENDENCY_SEGMENTS: Final = (KEY_SUFFIXES["budget"], KEY_SUFFIXES["subject"])
_PUSH: Final = object()


class CheckCacheStats(BaseModel):
    """Counters of the check cache since it was enabled (``kit.check_cache_stats()``).

    ``hits``/``misses``: checks answered from memory / by a round trip; ``fills``: replies
    stored; ``fills_refused``: replies not stored because a key they show was written during
    the round trip (or tracking was not proven); ``invalidations``: keys Redis pushed;
    ``resets``: times everything was dropped (connection lost, flush); ``lease_expiries``: times
    the heartbeat came back late and the cache stopped serving; ``joined``: misses answered by a
    round trip for the same scope already in flight; ``serving``: whether it serves now."""

    model_config = ConfigDict(frozen=True)

    hits: int
    misses: int
    fills: int
    fills_refused: int
    invalidations: int
    resets: int
    lease_expiries: int
    joined: int
    serving: bool

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class Ticket:
    """Taken before a round trip is sent: the state a fill from its reply is checked against
    (the epoch, the sequences of pushed keys and of the kit's own writes, the send time)."""

    epoch: int
    seq: int
    own: int
    sent: float  # time.monotonic()


@dataclass(slots=True)
class _Entry:
    reply: Reply
    deps: tuple[str, ...]  # the keys it shows
    ticket: Ticket  # of the round trip that filled it


@dataclass(slots=True)
class _Counters:
    hits: int = 0
    misses: int = 0
    fills: int = 0
    fills_refused: int = 0
    invalidations: int = 0
    resets: int = 0
    lease_expiries: int = 0
    joined: int = 0


class Tracker:
    """The RESP3 connection Redis pushes invalidations to; reconnects by itself.

    Replies to its own commands (``CLIENT TRACKING``) are read by the same reader task as the
    pushes and matched to the commands in order."""

    def __init__(
        self,
        pool: Any,
        on_keys: Callable[[list[str]], None],
        on_reset: Callable[[str], None],
    ) -> None:
        self._pool = pool
        self._on_keys = on_keys
        self._on_reset = on_reset
        self._prefixes: list[str] = []
        self._tracked: set[str] = set()
        self._connection: Any = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._connected_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def connected_at(self) -> float:
        """When tracking was (re)established (time.monotonic(); 0: never)."""
        return self._connected_at

    def abandon(self, why: str) -> None:
        """Drops the connection and reconnects (through the pool: a Sentinel pool reaches the
        current primary), as if it had broken."""
        connection = self._connection
        if connection is not None:
            self._broken(connection, BudgetUnavailable(why))

    def tracks(self, prefix: str) -> bool:
        return prefix in self._tracked

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> None:
        kwargs = {
            **self._pool.connection_kwargs,
            "protocol": 3,
            "parser_class": _AsyncRESP3Parser,
        }
        connection = self._pool.connection_class(**kwargs)
        await connection.connect()
        connection._parser.invalidation_push_handler_func = self._handle_push
        self._connection = connection
        self._reader = asyncio.ensure_future(self._read(connection))
        self._tracked = set()
        for prefix in list(self._prefixes):
            await self._track(prefix)
        self._connected_at = time.monotonic()

    async def track(self, prefix: str) -> None:
        """Adds ``prefix`` to the tracked prefixes (once)."""
        if prefix in self._prefixes:
            return
        self._prefixes.append(prefix)
        if self._connection is not None:
            await self._track(prefix)

    async def _track(self, prefix: str) -> None:
        await self._command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", prefix)
        self._tracked.add(prefix)

    async def _command(self, *args: Any) -> Any:
        connection = self._connection
        if connection is None:
            raise BudgetUnavailable("the check cache's tracking connection is down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        async with self._send_lock:
            self._pending.append(future)
            await connection.send_command(*args)
        async with asyncio.timeout(COMMAND_TIMEOUT_S):  # (wait_for can drop a cancellation)
            reply = await future
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _handle_push(self, response: list[Any]) -> object:
        keys = response[1] if len(response) > 1 else None
        if keys is None:
            self._on_reset("flush")
        else:
            self._on_keys([k.decode() if isinstance(k, bytes) else str(k) for k in keys])
        return _PUSH

    async def _read(self, connection: Any) -> None:
        try:
            while not self._closed:
                response = await connection.read_response(push_request=True)
                if response is _PUSH:
                    continue
                if self._pending:
                    future = self._pending.popleft()
                    if not future.done():
                        future.set_result(response)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a closed, killed or broken connection
            self._broken(connection, error)

    def _broken(self, connection: Any, error: BaseException) -> None:
        if self._connection is not connection:
            return
        self._connection = None
        self._tracked = set()
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(BudgetUnavailable(f"tracking connection lost: {error}"))
        _spawn(self._tasks, _disconnect(connection))
        self._on_reset(f"connection lost: {error}")
        if not self._closed:
            _spawn(self._tasks, self._reconnect())

    async def _reconnect(self) -> None:
        delay = RECONNECT_DELAY_FIRST_S
        while not self._closed and self._connection is None:
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except (redis_errors.RedisError, OSError, BudgetUnavailable) as error:
                log.debug("budgetkit: check cache reconnect failed: %s", error)
                self._connection = None
                delay = min(delay * 2, RECONNECT_DELAY_MAX_S)

    async def close(self) -> None:
        self._closed = True
        reader, self._reader = self._reader, None
        connection, self._connection = self._connection, None
        if reader is not None:
            await _cancelled(reader)
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()


@dataclass(slots=True)
class CheckCache:
    """The entries, the invalidation sequence and the heartbeat of one kit's cache."""

    client: Any
    keys: Keyspace
    heartbeat_ms: int
    _tracker: Tracker | None = None
    _entries: dict[ScopeKeys, _Entry] = field(default_factory=dict)
    _flights: dict[ScopeKeys, tuple[Ticket, asyncio.Future[Reply | None]]] = field(
        default_factory=dict
    )
    _dependents: dict[str, set[ScopeKeys]] = field(default_factory=dict)
    _touched: dict[str, int] = field(default_factory=dict)
    _seq: int = 0
    _written: dict[str, int] = field(default_factory=dict)
    _own: int = 0
    _epoch: int = 0
    _beat_prefix: str = ""
    _beat_seen: float = 0.0  # when the last heartbeat that came back was sent (monotonic)
    _beats_sent: dict[int, float] = field(default_factory=dict)  # heartbeat number -> sent
    _lease_s: float = 0.0
    _beater: asyncio.Task[None] | None = None
    _stopping: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _counters: _Counters = field(default_factory=_Counters)

    async def start(self) -> None:
        if not HEARTBEAT_MS_MIN <= self.heartbeat_ms <= HEARTBEAT_MS_MAX:
            raise InvalidInput(f"heartbeat_ms must be in [{HEARTBEAT_MS_MIN}, {HEARTBEAT_MS_MAX}]")
        pool = getattr(self.client, "connection_pool", None)
        if pool is None or not hasattr(pool, "connection_kwargs"):
            raise InvalidInput("the check cache needs a single Redis server or a Sentinel primary")
        self._lease_s = LEASE_BEATS * self.heartbeat_ms / 1000
        token = secrets.token_hex(8)
        self._beat_prefix = f"{self.keys.prefix}:!cache:{token}:"
        self._tracker = Tracker(pool, self._invalidate, self._reset)
        try:
            await self._tracker.start()
            await self._tracker.track(self._beat_prefix)
        except (redis_errors.RedisError, OSError, BudgetUnavailable, TimeoutError) as error:
            await self._tracker.close()
            raise BudgetUnavailable(
                f"the check cache could not start tracking (Redis >= 6 CLIENT TRACKING over "
                f"RESP3): {error}"
            ) from error
        self._beater = asyncio.ensure_future(self._beat())

    async def stop(self) -> None:
        self._stopping = True
        beater, self._beater = self._beater, None
        if beater is not None:
            await _cancelled(beater)
        if self._tracker is not None:
            await self._tracker.close()
        self._clear()

    # -- serving ------------------------------------------------------------------------------

    def serving(self) -> bool:
        """Tracking proven recently: connected and the last heartbeat came back in time."""
        tracker = self._tracker
        return (
            tracker is not None
            and tracker.connected
            and time.monotonic() - self._beat_seen < self._lease_s
        )

    def lookup(self, scoped: ScopeKeys, now_ms: int | None) -> Reply | None:
        """The cached reply of ``scoped`` if it is still current (``now_ms``: the kit's clock;
        None: the server's, estimated)."""
        entry = self._entries.get(scoped)
        if entry is None or not self.serving():
            self._counters.misses += 1
            return None
        touched = self._touched
        if any(touched.get(key, 0) > entry.ticket.seq for key in entry.deps):
            self._forget(scoped)
            self._counters.misses += 1
            return None
        if not _in_time(entry.reply, entry.ticket, now_ms):
            self._counters.misses += 1
            return None
        self._counters.hits += 1
        return entry.reply

    async def joined(self, scoped: ScopeKeys, now_ms: int | None) -> Reply | None:
        """The reply of a check of ``scoped`` already in flight, when nothing was pushed and
        the kit wrote nothing since it was sent: a check made meanwhile shares it instead of
        sending its own (after an invalidation, every task of a process misses at once). The
        shared answer is as current as a fill of that reply would be. None: no such flight, or
        it came back without a usable reply."""
        flight = self._flights.get(scoped)
        if flight is None or not self.serving():
            return None
        ticket, future = flight
        if (ticket.epoch, ticket.seq, ticket.own) != (self._epoch, self._seq, self._own):
            return None
        reply = await asyncio.shield(future)
        if reply is None or not _in_time(reply, ticket, now_ms):
            return None
        self._counters.joined += 1
        return reply

    def take_off(
        self, scoped: ScopeKeys, ticket: Ticket | None
    ) -> asyncio.Future[Reply | None] | None:
        """Registers the caller's check of ``scoped`` as the one others may join (``joined``);
        None when it may not be joined (no ticket, or another is in flight)."""
        if ticket is None or scoped in self._flights:
            return None
        future: asyncio.Future[Reply | None] = asyncio.get_running_loop().create_future()
        self._flights[scoped] = (ticket, future)
        return future

    def land(
        self, scoped: ScopeKeys, future: asyncio.Future[Reply | None] | None, reply: Reply | None
    ) -> None:
        """The check registered by ``take_off`` came back (``reply`` None: it failed)."""
        if future is None:
            return
        if self._flights.get(scoped, (None, None))[1] is future:
            del self._flights[scoped]
        if not future.done():
            future.set_result(reply)

    def ticket(self, organization_id: str) -> Ticket | None:
        """Before a round trip whose reply may fill the cache; None when it may not (the
        organization is not tracked yet: tracking starts now)."""
        tracker = self._tracker
        if tracker is None:
            return None
        prefix = self.keys.org(organization_id)
        if not tracker.tracks(prefix):
            if tracker.connected:
                _spawn(self._tasks, self._track(tracker, prefix))
            return None
        return Ticket(self._epoch, self._seq, self._own, time.monotonic())

    async def _track(self, tracker: Tracker, prefix: str) -> None:
        try:
            await tracker.track(prefix)
        except (TimeoutError, BudgetUnavailable, redis_errors.RedisError) as error:
            log.debug("budgetkit: check cache could not track %s: %s", prefix, error)

    def fill(self, scoped: ScopeKeys, reply: Reply, ticket: Ticket | None) -> None:
        """Stores ``reply`` for ``scoped`` unless something it shows was written after
        ``ticket`` was taken, or the cache does not serve."""
        if ticket is None or reply.replayed or reply.valid_until_ms is None:
            return
        budgets = (Keyspace.budget_under(scoped.org, s.budget_id) for s in reply.snapshots)
        deps = (*scoped.subjects, *budgets)
        touched, written = self._touched, self._written
        if (
            ticket.epoch != self._epoch
            or not self.serving()
            or any(touched.get(key, 0) > ticket.seq for key in deps)
            or any(written.get(key, 0) > ticket.own for key in deps)
        ):
            self._counters.fills_refused += 1
            return
        if len(self._entries) >= ENTRIES_MAX:
            self._clear()
        self._forget(scoped)
        self._entries[scoped] = _Entry(reply, deps, ticket)
        for key in deps:
            self._dependents.setdefault(key, set()).add(scoped)
        self._counters.fills += 1

    def drop(self, keys: Iterable[str]) -> None:
        """The kit's own write is about to be sent: forgets every entry showing one of ``keys``."""
        for key in keys:
            for scoped in self._dependents.pop(key, ()):
                self._forget(scoped)

    def written(
        self,
        keys: Iterable[str],
        fill: tuple[ScopeKeys, Reply, Ticket | None] | None = None,
    ) -> None:
        """The kit's own write came back having written ``keys``: every entry showing one is
        forgotten, ``fill`` (the write's own scope and reply, which show the state it left) is
        stored, and a round trip sent before now fills nothing that shows one of ``keys`` (its
        reply may predate the write)."""
        keys = list(keys)
        self.drop(keys)
        if fill is not None:
            self.fill(*fill)
        self._own += 1
        for key in keys:
            self._written[key] = self._own
        if len(self._written) > TOUCHED_MAX:
            self._reset("too many keys remembered")

    def stats(self) -> CheckCacheStats:
        return CheckCacheStats(**dataclasses.asdict(self._counters), serving=self.serving())

    # -- invalidations and heartbeat ----------------------------------------------------------

    def _invalidate(self, keys: list[str]) -> None:
        for key in keys:
            if key.startswith(self._beat_prefix):
                self._beat_back(key[len(self._beat_prefix) :])
                continue
            self._counters.invalidations += 1
            if not _is_dependency(key):
                continue
            self._seq += 1
            self._touched[key] = self._seq
            for scoped in self._dependents.pop(key, ()):
                self._entries.pop(scoped, None)
        if len(self._touched) > TOUCHED_MAX:
            self._reset("too many keys remembered")

    def _reset(self, why: str) -> None:
        log.debug("budgetkit: check cache reset: %s", why)
        self._counters.resets += 1
        self._epoch += 1
        self._beat_seen = 0.0
        self._beats_sent.clear()  # their pushes may be lost with the connection
        self._clear()

    def _clear(self) -> None:
        self._entries.clear()
        self._dependents.clear()
        self._touched.clear()
        self._written.clear()

    def _forget(self, scoped: ScopeKeys) -> None:
        entry = self._entries.pop(scoped, None)
        if entry is None:
            return
        for key in entry.deps:
            dependents = self._dependents.get(key)
            if dependents is not None:
                dependents.discard(scoped)
                if not dependents:
                    del self._dependents[key]

    def _beat_back(self, number: str) -> None:
        """Heartbeat ``number``'s push was read (each heartbeat writes a key of its own, so the
        push names it): the lease runs from when it was *sent*, so pushes that arrive late can
        never extend it: an answer served from memory is at most the lease older than the
        store. Pushes come in the order the SETs ran: earlier heartbeats not back by now never
        will be."""
        sent = self._beats_sent.pop(int(number), None) if number.isdigit() else None
        if sent is None:
            return  # sent before a reset, or the key's expiry: proves nothing
        for older in [n for n in self._beats_sent if n < int(number)]:
            del self._beats_sent[older]
        if self._beat_seen and sent - self._beat_seen >= self._lease_s:
            self._counters.lease_expiries += 1  # a gap: nothing was served meanwhile
        elif self._beat_seen and time.monotonic() - sent >= self._lease_s:
            self._counters.lease_expiries += 1  # came back late
        self._beat_seen = sent

    async def _beat(self) -> None:
        count = 0
        ttl_ms = max(10 * self.heartbeat_ms, 1000)
        while not self._stopping:
            count += 1
            if len(self._beats_sent) >= BEATS_PENDING_MAX:
                self._reset("heartbeats are not coming back")
            self._beats_sent[count] = time.monotonic()
            try:
                await self.client.set(f"{self._beat_prefix}{count}", 1, px=ttl_ms)
            except (redis_errors.RedisError, OSError) as error:
                log.debug("budgetkit: check cache heartbeat failed: %s", error)
            await asyncio.sleep(self.heartbeat_ms / 1000)
            self._check_tracking()

    def _check_tracking(self) -> None:
        """Heartbeats written (2 per lease) but none back for RECONNECT_LEASES leases while the
        tracking connection looks fine: it is not the server the writes go to (a Sentinel failover
        demoted it) or it died silently: connect again."""
        tracker = self._tracker
        if tracker is None or not tracker.connected:
            return
        proof = max(self._beat_seen, tracker.connected_at)
        overdue = time.monotonic() - proof > RECONNECT_LEASES * self._lease_s
        # (and that many heartbeats out: a stalled event loop sent none and reads them late)
        if overdue and len(self._beats_sent) >= RECONNECT_LEASES * LEASE_BEATS:
            tracker.abandon("no heartbeat came back: tracking a server the writes miss")


def _in_time(reply: Reply, ticket: Ticket, now_ms: int | None) -> bool:
    """Whether ``reply`` (of the round trip of ``ticket``) still shows the budgets as the clock
    leaves them: before its ``valid_until_ms`` by ``now_ms`` (the kit's clock), or by the
    server's estimated from the reply's ``now`` plus the local time since the call was *sent*
    (never behind the server's)."""
    if reply.valid_until_ms is None:
        return False
    if now_ms is None:
        now_ms = reply.now_ms + int((time.monotonic() - ticket.sent) * 1000) + 1
    return now_ms < reply.valid_until_ms


def _is_dependency(key: str) -> bool:
    """A budget hash or subject index set key (``P:{org}:b:…``, ``P:{org}:s:…``)."""
    end = key.find("}:")
    return end >= 0 and key.startswith(DEPENDENCY_SEGMENTS, end + 2)


def _spawn(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
    """Runs ``work`` in the background, keeping a reference until it is done."""
    task = asyncio.ensure_future(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancels ``task`` and waits for it, at most STOP_WAIT_S: redis-py can swallow a
    cancellation that lands inside a command, so the loops also check a stop flag."""
    task.cancel()
    await asyncio.wait({task}, timeout=STOP_WAIT_S)
    if task.done() and not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()


async def _disconnect(connection: Any) -> None:
    with contextlib.suppress(Exception):
        await connection.disconnect()
