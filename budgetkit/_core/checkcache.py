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
  PREFIX P:{org}:b: PREFIX P:{org}:s:`` for every organization the cache serves: Redis pushes the
  name of every budget hash and subject index set written (not the ledger, event or request
  record writes: no entry depends on them). Every pushed key gets the next value of a sequence
  (``_touched``); an entry is served only while none of its keys was pushed after the call that
  filled it was *sent* (its ``Ticket``), so a write that raced the round trip is never served as
  current.
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
it. Never a read replica's reply.

Topologies. One server or a Sentinel-managed primary: one tracking connection (a ``Channel``),
through the client's pool (after a Sentinel failover, heartbeats stop coming back to a
tracking connection left on the demoted server: after RECONNECT_LEASES leases it connects again
through the Sentinel pool, which reaches the new primary, and everything cached was dropped).
A Redis Cluster: every key of an organization shares its hash tag, so an organization is one
slot on one primary; a channel per primary that owns the slot of an organization served (opened
at its first check), with its own heartbeat key (a hash tag in one of that node's slots) and its
own lease: an entry is served only while the lease of the channel that filled it is current.
Every heartbeat, the channel first asks its node which slots it owns (``CLUSTER SLOTS`` on the
tracking connection) and then writes the heartbeat, so an ownership the node gave up is noticed
within a heartbeat: a slot of a served organization that left the node resets everything (a
slot migration deletes the keys on the old owner, whose pushes drop the entries showing them;
this also catches entries of keys that do not exist, e.g. a scope without budgets). A fill is
refused when the organization's slot owner, as the cluster client sees it now (a MOVED during
the round trip updates it), is not the node whose channel issued the ticket; the next check
tracks the new owner. A broken tracking connection resets everything; a node that no longer
is a primary or owns no slot has its channel closed.

The staleness canary (``canary_every``): every that many hits the cache also makes the round
trip for the scope in the background (never delaying the caller) and compares the fresh
snapshots with the ones it served. Only when nothing the entry shows was pushed or written by
the kit since the hit (the ticket), proven by a heartbeat sent after the fresh reply came back
(pushes arrive in order), so a write that legitimately raced the hit is not counted. A
difference means an invalidation was lost: it is counted (``canary_stale``), logged, and the
cache starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict
from redis import exceptions as redis_errors
from redis._parsers.resp3 import _AsyncRESP3Parser
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

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
#: The canary's default: one background round trip every this many hits (0: no canary).
CANARY_EVERY_DEFAULT: Final = 1000
CANARY_EVERY_MAX: Final = 1_000_000_000
#: How long a canary waits for a heartbeat sent after its round trip, in leases.
CANARY_WAIT_LEASES: Final = 20
#: Cluster: the slots of a Redis Cluster, tracking connections (nodes) at most, and hash tags
#: tried for a node's heartbeat key (a node owning 1 slot needs ~16k tries on average).
CLUSTER_SLOTS: Final = 16384
CHANNELS_MAX: Final = 1000
BEAT_TAG_TRIES_MAX: Final = 20 * CLUSTER_SLOTS
_PUSH: Final = object()
#: The errors a tracking command or a heartbeat may raise (anything else is a bug).
_REDIS_ERRORS: Final = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
    TimeoutError,
    BudgetUnavailable,
)


class CheckCacheStats(BaseModel):
    """Counters of the check cache since it was enabled (``kit.check_cache_stats()``).

    ``hits``/``misses``: checks answered from memory / by a round trip; ``fills``: replies
    stored; ``fills_refused``: replies not stored because a key they show was written during
    the round trip (or tracking was not proven, or the organization's slot moved);
    ``invalidations``: keys Redis pushed; ``resets``: times everything was dropped (connection
    lost, flush, slot moved, canary); ``lease_expiries``: times the heartbeat came back late and
    the cache stopped serving; ``joined``: misses answered by a round trip for the same scope
    already in flight;
    ``canary_checks``: cached answers compared with a fresh round trip (``canary_every``);
    ``canary_stale``: those that differed although no write was seen meanwhile (an invalidation
    lost: should stay 0); ``serving``: whether it serves now (on a Cluster: every tracking
    connection opened serves)."""

    model_config = ConfigDict(frozen=True)

    hits: int
    misses: int
    fills: int
    fills_refused: int
    invalidations: int
    resets: int
    lease_expiries: int
    joined: int
    canary_checks: int = 0
    canary_stale: int = 0
    serving: bool

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before the first check."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class Ticket:
    """Taken before a round trip is sent: the state a fill from its reply is checked against
    (the epoch, the sequences of pushed keys and of the kit's own writes, the send time, and
    the channel whose tracking connection proves the keys of the scope's organization)."""

    epoch: int
    seq: int
    own: int
    sent: float  # time.monotonic()
    channel: Channel


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
    canary_checks: int = 0
    canary_stale: int = 0


class Tracker:
    """The RESP3 connection Redis pushes invalidations to; reconnects by itself.

    ``source``: where its connections come from: a connection pool (one server, Sentinel) or a
    Cluster node; anything with ``connection_class`` and ``connection_kwargs``. Replies to its
    own commands (``CLIENT TRACKING``) are read by the same reader task as the pushes and
    matched to the commands in order."""

    def __init__(
        self,
        source: Any,
        on_keys: Callable[[list[str]], None],
        on_reset: Callable[[str], None],
    ) -> None:
        self._source = source
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

    def start_in_background(self) -> None:
        """Connects in the background, again and again (backing off) until connected."""
        _spawn(self._tasks, self._reconnect(0.0, warn_first=True))

    async def _connect(self) -> None:
        kwargs = {
            **self._source.connection_kwargs,
            "protocol": 3,
            "parser_class": _AsyncRESP3Parser,
        }
        connection = self._source.connection_class(**kwargs)
        await connection.connect()
        if self._closed:
            await _disconnect(connection)
            return
        connection._parser.invalidation_push_handler_func = self._handle_push
        self._connection = connection
        self._reader = asyncio.ensure_future(self._read(connection))
        self._tracked = set()
        if self._prefixes:
            await self._track(list(self._prefixes))
        self._connected_at = time.monotonic()

    async def track(self, *prefixes: str) -> None:
        """Adds ``prefixes`` to the tracked prefixes (each once), in one command."""
        new = [prefix for prefix in prefixes if prefix not in self._prefixes]
        if not new:
            return
        self._prefixes.extend(new)
        if self._connection is not None:
            await self._track(new)

    async def _track(self, prefixes: list[str]) -> None:
        args = [arg for prefix in prefixes for arg in ("PREFIX", prefix)]
        await self._command("CLIENT", "TRACKING", "ON", "BCAST", *args)
        self._tracked.update(prefixes)

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

    async def _reconnect(
        self, delay_s: float = RECONNECT_DELAY_FIRST_S, *, warn_first: bool = False
    ) -> None:
        while not self._closed and self._connection is None:
            await asyncio.sleep(delay_s)
            try:
                await self._connect()
            except _REDIS_ERRORS as error:
                level = logging.WARNING if warn_first else logging.DEBUG
                log.log(level, "budgetkit: check cache tracking connection failed: %s", error)
                warn_first = False
                self._connection = None
                delay_s = min(max(delay_s * 2, RECONNECT_DELAY_FIRST_S), RECONNECT_DELAY_MAX_S)

    async def close(self) -> None:
        self._closed = True
        reader, self._reader = self._reader, None
        connection, self._connection = self._connection, None
        if reader is not None:
            await _cancelled(reader)
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()


@dataclass(eq=False, slots=True)
class Channel:
    """One tracking connection and its heartbeat lease: the only one on one server or a
    Sentinel primary (``node`` ""); one per primary on a Cluster (``node``: its ``host:port``).

    ``beat_prefix``: the prefix of its heartbeat keys ("" until chosen: on a Cluster once the
    node's slots are known); ``beat_seen``: when the last heartbeat that came back was sent;
    ``owned``: Cluster: the slots the node said it owns at its last heartbeat; ``slots``: the
    slots of the organizations it issued tickets for."""

    node: str
    lease_s: float
    tracker: Tracker = field(init=False)
    beat_prefix: str = ""
    beat_slot: int = -1
    beat_seen: float = 0.0
    beats_sent: dict[int, float] = field(default_factory=dict)  # heartbeat number -> sent
    node_id: str = ""
    owned: bytes = b""
    slots: set[int] = field(default_factory=set)
    beater: asyncio.Task[None] | None = None
    closed: bool = False

    def serving(self) -> bool:
        """Tracking proven recently: connected and the last heartbeat came back in time."""
        return self.tracker.connected and time.monotonic() - self.beat_seen < self.lease_s

    def owns(self, slot: int) -> bool:
        """Cluster: the node said it owns ``slot`` at its last heartbeat."""
        return bool(self.owned) and self.owned[slot] == 1


@dataclass(slots=True)
class CheckCache:
    """The entries, the invalidation sequence and the tracking channels of one kit's cache.

    ``round_trip``: a fresh check of a scope, never cached (the canary's; None: no canary);
    ``canary_every``: hits between two canary round trips (0: none)."""

    client: Any
    keys: Keyspace
    heartbeat_ms: int
    canary_every: int = CANARY_EVERY_DEFAULT
    round_trip: Callable[[ScopeKeys], Awaitable[Reply]] | None = None
    _cluster: bool = False
    _token: str = ""
    _channels: dict[str, Channel] = field(default_factory=dict)
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
    _lease_s: float = 0.0
    _canary: asyncio.Task[None] | None = None
    _stopping: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _counters: _Counters = field(default_factory=_Counters)

    async def start(self) -> None:
        self._validate()
        self._lease_s = LEASE_BEATS * self.heartbeat_ms / 1000
        self._token = secrets.token_hex(8)
        self._cluster = isinstance(self.client, RedisCluster)
        if self._cluster:
            await self._start_cluster()
            return
        pool = getattr(self.client, "connection_pool", None)
        if pool is None or not hasattr(pool, "connection_kwargs"):
            raise InvalidInput("the check cache needs a redis.asyncio Redis or RedisCluster client")
        channel = self._new_channel("", pool)
        channel.beat_prefix = f"{self.keys.prefix}:!cache:{self._token}:"
        try:
            await channel.tracker.start()
            await channel.tracker.track(channel.beat_prefix)
        except _REDIS_ERRORS as error:
            await channel.tracker.close()
            raise BudgetUnavailable(
                f"the check cache could not start tracking (Redis >= 6 CLIENT TRACKING over "
                f"RESP3): {error}"
            ) from error
        self._channels[""] = channel
        channel.beater = asyncio.ensure_future(self._beat(channel))

    def _validate(self) -> None:
        if not HEARTBEAT_MS_MIN <= self.heartbeat_ms <= HEARTBEAT_MS_MAX:
            raise InvalidInput(f"heartbeat_ms must be in [{HEARTBEAT_MS_MIN}, {HEARTBEAT_MS_MAX}]")
        every = self.canary_every
        if isinstance(every, bool) or not isinstance(every, int):
            raise InvalidInput("canary_every must be an int")
        if not 0 <= every <= CANARY_EVERY_MAX:
            raise InvalidInput(f"canary_every must be in [0, {CANARY_EVERY_MAX}]")

    async def _start_cluster(self) -> None:
        """Learns the slots (a channel opens per primary at the first check of an organization
        it owns)."""
        try:
            await self.client.initialize()
        except _REDIS_ERRORS as error:
            raise BudgetUnavailable(f"the check cache cannot reach the cluster: {error}") from error

    def _new_channel(self, node: str, source: Any) -> Channel:
        channel = Channel(node, self._lease_s)
        channel.tracker = Tracker(
            source,
            lambda keys: self._invalidate(keys, channel),
            lambda why: self._reset(why, channel),
        )
        return channel

    async def stop(self) -> None:
        self._stopping = True
        canary, self._canary = self._canary, None
        if canary is not None:
            await _cancelled(canary)
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            channel.closed = True
            beater, channel.beater = channel.beater, None
            if beater is not None:
                await _cancelled(beater)
            await channel.tracker.close()
        self._clear()

    @property
    def _tracker(self) -> Tracker | None:
        """The tracker of the only channel (one server or a Sentinel primary); None on a
        Cluster or before it started."""
        channel = self._channels.get("")
        return None if channel is None else channel.tracker

    # -- serving ------------------------------------------------------------------------------

    def serving(self) -> bool:
        """Tracking proven recently on every channel (and there is one)."""
        channels = list(self._channels.values())
        return bool(channels) and all(channel.serving() for channel in channels)

    def lookup(self, scoped: ScopeKeys, now_ms: int | None) -> Reply | None:
        """The cached reply of ``scoped`` if it is still current (``now_ms``: the kit's clock;
        None: the server's, estimated)."""
        entry = self._entries.get(scoped)
        if entry is None or not entry.ticket.channel.serving():
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
        counters = self._counters
        counters.hits += 1
        if self.canary_every and counters.hits % self.canary_every == 0:
            self._launch_canary(scoped, entry)
        return entry.reply

    async def joined(self, scoped: ScopeKeys, now_ms: int | None) -> Reply | None:
        """The reply of a check of ``scoped`` already in flight, when nothing was pushed and
        the kit wrote nothing since it was sent: a check made meanwhile shares it instead of
        sending its own (after an invalidation, every task of a process misses at once). The
        shared answer is as current as a fill of that reply would be. None: no such flight, or
        it came back without a usable reply."""
        flight = self._flights.get(scoped)
        if flight is None:
            return None
        ticket, future = flight
        if not ticket.channel.serving():
            return None
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
        prefix = self.keys.org(organization_id)
        if self._cluster:
            return self._cluster_ticket(prefix)
        channel = self._channels.get("")
        if channel is None:
            return None
        return self._tracked_ticket(channel, prefix)

    def _tracked_ticket(self, channel: Channel, prefix: str) -> Ticket | None:
        """A ticket once the organization (key prefix ``prefix``) is tracked on ``channel``:
        only the keys an entry depends on (its budget hashes and subject index sets), so the
        ledger, event and request-record writes of a debit push nothing."""
        tracker = channel.tracker
        missing = [p for p in _dependency_prefixes(prefix) if not tracker.tracks(p)]
        if missing:
            if tracker.connected:
                _spawn(self._tasks, self._track(tracker, missing))
            return None
        return Ticket(self._epoch, self._seq, self._own, time.monotonic(), channel)

    def _cluster_ticket(self, prefix: str) -> Ticket | None:
        """The ticket of the channel of the primary that owns the organization's slot (as the
        cluster client sees it: where the round trip goes); None until that node said it owns
        the slot and the organization is tracked there."""
        slot = key_slot(prefix.encode())
        channel = self._channel_of_slot(slot)
        if channel is None or not channel.owns(slot):
            return None
        ticket = self._tracked_ticket(channel, prefix)
        if ticket is not None:
            channel.slots.add(slot)
        return ticket

    def _channel_of_slot(self, slot: int) -> Channel | None:
        """The channel of the slot's primary (as the cluster client sees it), opened when it
        has none yet; None when no node serves the slot or too many channels are open."""
        try:
            node = self.client.nodes_manager.get_node_from_slot(slot)
        except (redis_errors.RedisClusterException, redis_errors.RedisError):
            return None
        channel = self._channels.get(node.name)
        if channel is None and not self._stopping and len(self._channels) < CHANNELS_MAX:
            channel = self._new_channel(node.name, node)
            self._channels[node.name] = channel
            channel.tracker.start_in_background()
            channel.beater = asyncio.ensure_future(self._beat(channel))
        return channel

    async def _track(self, tracker: Tracker, prefixes: list[str]) -> None:
        try:
            await tracker.track(*prefixes)
        except _REDIS_ERRORS as error:
            log.debug("budgetkit: check cache could not track %s: %s", prefixes, error)

    def fill(self, scoped: ScopeKeys, reply: Reply, ticket: Ticket | None) -> None:
        """Stores ``reply`` for ``scoped`` unless something it shows was written after
        ``ticket`` was taken, the cache does not serve, or (Cluster) the organization's slot is
        no longer where the ticket's channel is."""
        if ticket is None or reply.replayed or reply.valid_until_ms is None:
            return
        budgets = (Keyspace.budget_under(scoped.org, s.budget_id) for s in reply.snapshots)
        deps = (*scoped.subjects, *budgets)
        if (
            not ticket.channel.serving()
            or not self._unchanged_since(ticket, deps)
            or (self._cluster and not self._still_home(scoped.org, ticket.channel))
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

    def _unchanged_since(self, ticket: Ticket, deps: Iterable[str]) -> bool:
        """Nothing of ``deps`` was pushed or written by the kit since ``ticket``, and no reset."""
        if ticket.epoch != self._epoch:
            return False
        touched, written = self._touched, self._written
        return not any(
            touched.get(key, 0) > ticket.seq or written.get(key, 0) > ticket.own for key in deps
        )

    def _still_home(self, org_key: str, channel: Channel) -> bool:
        """Cluster: the organization's slot is, as the cluster client sees it now, on the node
        of ``channel`` (a MOVED during the round trip moved it); else its new owner's channel
        opens."""
        slot = key_slot(org_key.encode())
        owner = self._channel_of_slot(slot)
        return owner is channel and not channel.closed

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

    # -- the canary ---------------------------------------------------------------------------

    def _launch_canary(self, scoped: ScopeKeys, entry: _Entry) -> None:
        """A background round trip for ``scoped``, compared with ``entry`` (served just now);
        one at a time."""
        if self._canary is not None or self.round_trip is None or self._stopping:
            return
        channel = entry.ticket.channel
        ticket = Ticket(self._epoch, self._seq, self._own, time.monotonic(), channel)
        self._canary = asyncio.ensure_future(self._run_canary(scoped, entry, ticket))

    async def _run_canary(self, scoped: ScopeKeys, served: _Entry, ticket: Ticket) -> None:
        assert self.round_trip is not None
        try:
            fresh = await self.round_trip(scoped)
            if not await self._beat_sent_after(ticket.channel, time.monotonic()):
                return
            if not self._unchanged_since(ticket, served.deps):
                return  # a write raced the hit: its push explains any difference
            self._counters.canary_checks += 1
            if fresh.snapshots != served.reply.snapshots:
                self._counters.canary_stale += 1
                log.warning("budgetkit: the check cache's canary saw a stale answer: reset")
                self._reset("the canary saw a stale answer")
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a failed round trip proves nothing
            log.debug("budgetkit: check cache canary skipped: %s", error)
        finally:
            self._canary = None

    async def _beat_sent_after(self, channel: Channel, after: float) -> bool:
        """Waits until a heartbeat sent after ``after`` came back on ``channel`` (then every
        push of a write its round trip saw was read), at most CANARY_WAIT_LEASES leases."""
        deadline = after + CANARY_WAIT_LEASES * self._lease_s
        while channel.beat_seen < after:
            if channel.closed or self._stopping or time.monotonic() > deadline:
                return False
            await asyncio.sleep(self.heartbeat_ms / 2000)
        return True

    # -- invalidations and heartbeat ----------------------------------------------------------

    def _invalidate(self, keys: list[str], channel: Channel) -> None:
        beat_prefix = channel.beat_prefix
        for key in keys:
            if beat_prefix and key.startswith(beat_prefix):
                self._beat_back(key[len(beat_prefix) :], channel)
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

    def _reset(self, why: str, channel: Channel | None = None) -> None:
        """Drops everything and starts a new epoch; the heartbeats of ``channel`` (None: of
        every channel) prove nothing any more: their pushes may be lost with the connection."""
        log.debug("budgetkit: check cache reset: %s", why)
        self._counters.resets += 1
        self._epoch += 1
        for each in [channel] if channel is not None else self._channels.values():
            each.beat_seen = 0.0
            each.beats_sent.clear()
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

    def _beat_back(self, number: str, channel: Channel) -> None:
        """Heartbeat ``number``'s push was read (each heartbeat writes a key of its own, so the
        push names it): the lease runs from when it was *sent*, so pushes that arrive late can
        never extend it: an answer served from memory is at most the lease older than the
        store. Pushes come in the order the SETs ran: earlier heartbeats not back by now never
        will be."""
        sent_by_number = channel.beats_sent
        sent = sent_by_number.pop(int(number), None) if number.isdigit() else None
        if sent is None:
            return  # sent before a reset, or the key's expiry: proves nothing
        for older in [n for n in sent_by_number if n < int(number)]:
            del sent_by_number[older]
        seen = channel.beat_seen
        if seen and sent - seen >= self._lease_s:
            self._counters.lease_expiries += 1  # a gap: nothing was served meanwhile
        elif seen and time.monotonic() - sent >= self._lease_s:
            self._counters.lease_expiries += 1  # came back late
        channel.beat_seen = sent

    async def _beat(self, channel: Channel) -> None:
        count = 0
        ttl_ms = max(10 * self.heartbeat_ms, 1000)
        while not self._stopping and not channel.closed:
            if not self._cluster or await self._cluster_ready(channel):
                count += 1
                await self._send_beat(channel, count, ttl_ms)
            await asyncio.sleep(self.heartbeat_ms / 1000)
            self._check_tracking(channel)

    async def _send_beat(self, channel: Channel, count: int, ttl_ms: int) -> None:
        if len(channel.beats_sent) >= BEATS_PENDING_MAX:
            self._reset("heartbeats are not coming back", channel)
        channel.beats_sent[count] = time.monotonic()
        try:
            await self.client.set(f"{channel.beat_prefix}{count}", 1, px=ttl_ms)
        except _REDIS_ERRORS as error:
            log.debug("budgetkit: check cache heartbeat failed: %s", error)

    def _check_tracking(self, channel: Channel) -> None:
        """Heartbeats written (2 per lease) but none back for RECONNECT_LEASES leases while the
        tracking connection looks fine: it is not the server the writes go to (a Sentinel failover
        demoted it) or it died silently: connect again."""
        tracker = channel.tracker
        if not tracker.connected:
            return
        proof = max(channel.beat_seen, tracker.connected_at)
        overdue = time.monotonic() - proof > RECONNECT_LEASES * self._lease_s
        # (and that many heartbeats out: a stalled event loop sent none and reads them late)
        if overdue and len(channel.beats_sent) >= RECONNECT_LEASES * LEASE_BEATS:
            tracker.abandon("no heartbeat came back: tracking a server the writes miss")

    # -- Cluster: the slots of a channel's node -------------------------------------------------

    async def _cluster_ready(self, channel: Channel) -> bool:
        """Before each heartbeat of a Cluster channel: proves the node's slots
        (``_prove_slots``). False: no heartbeat now (not connected, no answer, or the channel
        closed)."""
        if not channel.tracker.connected:
            if not self._is_primary(channel.node):
                self._close_channel(channel, "no longer a primary")
            return False
        try:
            return await self._prove_slots(channel)
        except _REDIS_ERRORS as error:
            log.debug("budgetkit: check cache: slots of %s unknown: %s", channel.node, error)
            return False

    async def _prove_slots(self, channel: Channel) -> bool:
        """Asks the node which slots it owns (on the tracking connection, so the answer is read
        in order with the pushes), resets when a slot of an organization served left it, and
        keeps the heartbeat key in one of its slots."""
        owned = await self._owned_slots(channel)
        if not any(owned):
            self._close_channel(channel, "owns no slot")
            return False
        channel.owned = owned
        moved = [slot for slot in channel.slots if not owned[slot]]
        if moved:
            channel.slots.difference_update(moved)
            self._reset(f"{len(moved)} slot(s) of organizations served left {channel.node}")
        if channel.beat_slot < 0 or not owned[channel.beat_slot]:
            await self._choose_beat_prefix(channel, owned)
        return True

    async def _owned_slots(self, channel: Channel) -> bytes:
        """One byte per slot, 1 where the channel's node says it is the primary (its own view:
        ``CLUSTER SLOTS``)."""
        tracker = channel.tracker
        if not channel.node_id:
            channel.node_id = _text(await tracker._command("CLUSTER", "MYID"))
        ranges = await tracker._command("CLUSTER", "SLOTS")
        owned = bytearray(CLUSTER_SLOTS)
        for entry in ranges:
            low, high, primary = int(entry[0]), int(entry[1]), entry[2]
            if len(primary) > 2 and _text(primary[2]) == channel.node_id:
                owned[low : high + 1] = b"\x01" * (high - low + 1)
        return bytes(owned)

    async def _choose_beat_prefix(self, channel: Channel, owned: bytes) -> None:
        """A heartbeat prefix whose hash tag is in a slot the node owns, tracked there."""
        for number in range(BEAT_TAG_TRIES_MAX):
            tag = str(number)
            slot = key_slot(tag.encode())
            if owned[slot]:
                prefix = f"{self.keys.prefix}:!cache:{{{tag}}}:{self._token}:"
                await channel.tracker.track(prefix)
                channel.beat_prefix, channel.beat_slot = prefix, slot
                channel.beats_sent.clear()
                return
        raise BudgetUnavailable(f"no heartbeat key found for {channel.node}")

    def _is_primary(self, node: str) -> bool:
        """The cluster client still sees ``node`` as a primary."""
        return any(primary.name == node for primary in self.client.get_primaries())

    def _close_channel(self, channel: Channel, why: str) -> None:
        """Closes a Cluster channel whose node serves nothing of ours any more: everything
        starts over (its organizations are tracked again on their owners)."""
        if self._channels.get(channel.node) is channel:
            del self._channels[channel.node]
        channel.closed = True
        _spawn(self._tasks, channel.tracker.close())
        self._reset(f"{channel.node} {why}")


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


def _dependency_prefixes(org_prefix: str) -> tuple[str, ...]:
    """The tracked prefixes of an organization (``P:{org}:b:``, ``P:{org}:s:``)."""
    return tuple(org_prefix + segment for segment in DEPENDENCY_SEGMENTS)


def _is_dependency(key: str) -> bool:
    """A budget hash or subject index set key (``P:{org}:b:…``, ``P:{org}:s:…``)."""
    end = key.find("}:")
    return end >= 0 and key.startswith(DEPENDENCY_SEGMENTS, end + 2)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
