"""Script runtime: loads ``lua/*.lua`` as one Redis Functions library, calls it, translates
its errors.

The library is the shared prelude ``_lib.lua`` followed by every operation's file, each wrapped
in a function registered as ``<library>_<operation>`` (``LIBRARY_PREFIX`` + a hash of the source:
two budgetkit versions sharing a server each call their own functions during a rolling upgrade).
The prelude runs once, when the library is loaded, not on every call. Calls are ``FCALL`` (and
``FCALL_RO`` for the read-only ``check_ro``, which replicas accept). A ``Function not found``
reply (a new or flushed server, a restart without persistence) loads the library with
``FUNCTION LOAD REPLACE`` and retries once; functions are replicated and persisted by Redis, so a
promoted replica already has them. ``BK_<CODE> message`` error replies become typed errors here
— the one seam between Redis errors and budgetkit errors.

A function that may write is refused up front by a primary over ``maxmemory`` (OOM) and by a
replica (READONLY); a ``check`` so refused is answered by ``check_ro`` instead: the same budgets
rolled over in memory, nothing written (a due rollover is written by the next call that can).

Topologies (``topology_of``): one server, a Sentinel-managed primary, or a Redis Cluster.

- **Cluster.** ``FUNCTION LOAD`` goes to every primary (best effort); a node that lacks the
  library (a node added later and given slots) answers ``Function not found`` and gets it by a
  ``FUNCTION LOAD`` sent to that node. Every call also declares a *migration guard*: a key of
  the organization's slot that never exists (``P:{org}:!guard``), appended as the last key and
  removed from ``KEYS`` by the ``<function>_g`` variant before the operation runs. The scope
  operations read and write keys they build themselves (budgets, ledgers, holds); while the
  slot is being migrated, some of those keys may already be on the target node and others still
  on the source, and Redis
  fails a script at the first such key — after the writes it already made (verified on Redis
  7.0: a partial write on the source, and on the importing node a second copy of a key that
  MIGRATE then refuses with BUSYKEY). Redis runs a multi-key command on a slot in migration
  only when every declared key is present on the node it reaches; the guard is never present,
  so during a migration every call gets ``TRYAGAIN`` (not run) instead, and runs on the new
  owner once the slot is moved. The slot is unavailable for the migration's duration (a few
  milliseconds per key batch), never inconsistent.
- **Cluster and Sentinel.** Errors that prove the call did not run (no connection,
  ``TRYAGAIN`` until redis-py gave up, ``CLUSTERDOWN``, a demoted primary's ``READONLY``,
  ``NOREPLICAS``, ``LOADING``, ``MASTERDOWN``) are retried with a capped exponential backoff
  for at most ``failover_retry_s`` seconds (default ``FAILOVER_RETRY_S``), re-discovering the
  topology in between: that is how a client follows a failover or a resharding. A reply lost
  after sending (``OutcomeUnknown``) is never retried here. With Sentinel the primary's address
  is also re-read from the sentinels at most every ``SENTINEL_REFRESH_S`` seconds, so the
  client leaves a demoted primary within that delay even if the old one still accepts writes.
- **One server.** No failover retry, no guard.
- **Every topology.** A call whose connection closed after it was sent (its reply lost) is sent
  again, at most ``RESENDS_MAX`` times: every mutation carries a request record the script
  checks first (_core.redelivery), so the resend returns the first reply instead of applying
  twice. Refusals are told apart from bugs in _core.store_errors; only those a failover ends
  (``store_errors.PASSING_CODES``) are retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from budgetkit._core.errors import (
    BudgetkitError,
    BudgetUnavailable,
    OutcomeUnknown,
    PermissionDenied,
    ScriptError,
)
from budgetkit._core.redelivery import RESENDS_MAX
from budgetkit._core.store_errors import (
    budgetkit_error,
    passing,
    refusal,
    reply_code,
    translate_reply,
)
from budgetkit._core.storeformat import parse_format, verify

if TYPE_CHECKING:
    from budgetkit._core.durability import DurableWriter
    from budgetkit._core.urls import RedisClient

log = logging.getLogger("budgetkit")

PRELUDE_NAME = "_lib"
LIBRARY_PREFIX = "budgetkit"
#: Operations registered with the ``no-writes`` flag (callable with FCALL_RO, on replicas).
READ_ONLY_OPERATIONS = frozenset({"check_ro"})
#: A write function refused up front (OOM, READONLY) is answered by its read-only twin.
READ_ONLY_TWINS = {"check": "check_ro"}
TWIN_REFUSALS = ("OOM", "READONLY")
LOAD_RETRIES_MAX = 1
#: Cluster/Sentinel: how long a call that provably did not run is retried (seconds).
FAILOVER_RETRY_S = 10.0
FAILOVER_DELAY_FIRST_S = 0.05
FAILOVER_DELAY_MAX_S = 1.0
#: Sentinel: the primary's address is re-read from the sentinels at most this often.
SENTINEL_REFRESH_S = 0.5
#: Cluster: the never-written key every call declares last (see the module docstring).
GUARD_NAME = "!guard"
GUARD_SUFFIX = "_g"

ScriptArg = str | int | bytes
Topology = Literal["single", "sentinel", "cluster"]


def lua_dir() -> Path:
    """The directory holding the Lua sources: ``budgetkit/lua`` (the wheel packs the repo's
    top-level lua/ there; in a checkout it is a link to lua/)."""
    return Path(str(resources.files("budgetkit"))) / "lua"


def _operation_sources(directory: Path) -> tuple[str, dict[str, str]]:
    prelude = (directory / f"{PRELUDE_NAME}.lua").read_text(encoding="utf-8")
    bodies = {
        path.stem: path.read_text(encoding="utf-8")
        for path in sorted(directory.glob("*.lua"))
        if not path.stem.startswith("_")
    }
    return prelude, bodies


@dataclass(frozen=True, slots=True)
class Library:
    """The Redis Functions library of every operation: its name (``budgetkit_`` + 12 hex digits
    of the source's SHA1), its source for ``FUNCTION LOAD``, and the operations it registers."""

    name: str
    source: str
    operations: frozenset[str]

    def function(self, operation: str, guarded: bool = False) -> str:
        """The registered name of ``operation`` (``guarded``: the Cluster variant that drops
        the migration guard, its last key, first)."""
        if operation not in self.operations:
            raise ScriptError(f"no operation {operation!r} in the library")
        return f"{self.name}_{operation}{GUARD_SUFFIX if guarded else ''}"


def load_library(directory: Path | None = None) -> Library:
    """Builds the library from ``directory`` (default: the packaged Lua): the prelude, then each
    operation's file as the body of a function of (KEYS, ARGV), registered twice (plain and
    guarded)."""
    prelude, bodies = _operation_sources(directory or lua_dir())
    parts = [prelude, "local OPERATIONS = {}"]
    for name, body in bodies.items():
        parts.append(f"OPERATIONS[{name!r}] = function(KEYS, ARGV)\n{body}\nend")
    code = "\n".join(parts)

    # Unrolled: while the library loads, only the registration API is available (no pairs).
    def registrations(library: str) -> str:
        return "\n".join(
            _registration(library, name, guarded) for name in bodies for guarded in (False, True)
        )

    digest = hashlib.sha1(
        (code + registrations("")).encode("utf-8"), usedforsecurity=False
    ).hexdigest()[:12]
    library = f"{LIBRARY_PREFIX}_{digest}"
    register = registrations(library)
    source = f"#!lua name={library}\n{code}\n{register}"
    return Library(library, source, frozenset(bodies))


def _registration(library: str, name: str, guarded: bool) -> str:
    flags = "{ 'no-writes' }" if name in READ_ONLY_OPERATIONS else "{}"
    callback = f"OPERATIONS[{name!r}]"
    if guarded:  # drops the migration guard, the last key
        callback = f"function(KEYS, ARGV) table.remove(KEYS) return {callback}(KEYS, ARGV) end"
    suffix = GUARD_SUFFIX if guarded else ""
    return (
        f"redis.register_function{{ function_name = '{library}_{name}{suffix}', "
        f"callback = {callback}, flags = {flags} }}"
    )


@dataclass(frozen=True, slots=True)
class Script:
    """One operation as a standalone EVAL script (prelude + body) and its SHA1: what the Lua
    A/B tools in scripts/ and a few tests run; the client calls the library."""

    name: str
    source: str
    sha: str


def load_scripts(directory: Path | None = None) -> dict[str, Script]:
    """Every operation of ``directory`` as a standalone EVAL script."""
    prelude, bodies = _operation_sources(directory or lua_dir())
    scripts: dict[str, Script] = {}
    for name, body in bodies.items():
        source = prelude + "\n" + body
        sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
        scripts[name] = Script(name, source, sha)
    return scripts


def missing_function(error: BaseException) -> bool:
    """The server does not have the library (new, flushed, restarted without persistence)."""
    return isinstance(error, redis_errors.ResponseError) and str(error).startswith(
        "Function not found"
    )


def slot_prefix(key: str) -> str:
    """The key up to and including its hash tag: ``bk:{org_1}:b:x`` -> ``bk:{org_1}``."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    if start < 0 or end <= start + 1:
        raise ScriptError(f"a Redis Cluster key needs a hash tag: {key!r}")
    return key[: end + 1]


def guard_key(key: str) -> str:
    """The migration guard of ``key``'s slot (never written by anyone)."""
    return f"{slot_prefix(key)}:{GUARD_NAME}"


def topology_of(client: object) -> Topology:
    if isinstance(client, RedisCluster):
        return "cluster"
    if isinstance(getattr(client, "connection_pool", None), SentinelConnectionPool):
        return "sentinel"
    return "single"


def translate_response_error(error: redis_errors.ResponseError) -> Exception:
    """Maps a ``BK_<CODE> message`` reply to its typed error; anything else is a ScriptError
    (``translate_error`` first tells the store's refusals apart: budgetkit._core.store_errors)."""
    return budgetkit_error(error) or ScriptError(str(error))


def _not_sent(error: redis_errors.ConnectionError | redis_errors.TimeoutError) -> bool:
    """A connection error raised before the command left this process (or from a server
    that could not have run it: a demoted primary, a node still loading)."""
    if isinstance(error, redis_errors.MaxConnectionsError | redis_errors.BusyLoadingError):
        return True
    if isinstance(error, redis_errors.AuthenticationError):
        return True
    text = str(error)
    return (
        "connecting to" in text  # redis-py's wording for a failed connect (or its timeout)
        or "previous master is now a slave" in text  # Sentinel: READONLY from a demoted primary
        or "No master found" in text  # Sentinel: MasterNotFoundError
    )


def translate_error(name: str, error: BaseException) -> BaseException:
    """The budgetkit error for a redis-py error raised by a script call (or by the connection
    handshake before it: AUTH, SELECT)."""
    if isinstance(error, BudgetkitError):
        return error
    if isinstance(error, redis_errors.ResponseError):
        return translate_reply(name, error)
    if isinstance(error, redis_errors.ClusterError | redis_errors.RedisClusterException):
        # redis-py raises these after following MOVED/ASK/TRYAGAIN for too long, for a slot no
        # node serves, or when no startup node can be reached or agrees on the slots: in every
        # case before the command was sent.
        return BudgetUnavailable(f"{name} not run, the cluster could not serve it: {error}")
    if isinstance(error, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return connection_failure(name, error)
    return error


class ReplyLost(OutcomeUnknown):
    """The connection closed after the request was sent: the reply is lost, the server is not
    known to be stuck, so ScriptRuntime.call sends the request again (its request record makes
    that safe, budgetkit._core.redelivery). A timeout is a plain OutcomeUnknown: not resent."""


def connection_failure(
    name: str, error: redis_errors.ConnectionError | redis_errors.TimeoutError
) -> BudgetUnavailable:
    """BudgetUnavailable when the command was not sent or the server refused it (WRONGPASS,
    NOAUTH, LOADING, too many clients: nothing applied), OutcomeUnknown when the connection
    broke after sending (maybe applied: retry with the idempotency key) — ReplyLost when it
    closed rather than timed out."""
    refused = refusal(name, error)
    if refused is not None:
        return refused
    if _not_sent(error):
        return BudgetUnavailable(f"cannot reach Redis: {error}")
    if isinstance(error, redis_errors.TimeoutError):
        return OutcomeUnknown(f"{name}: no reply in time after sending: {error}")
    return ReplyLost(f"{name}: connection lost after sending: {error}")


class ScriptRuntime:
    """Calls operation scripts on one Redis client (one connection pool, or one Cluster).

    ``durability``: wait for replica acknowledgements after each mutation (_core.durability).
    ``failover_retry_s``: how long calls that provably did not run are retried; default 0 on
    one server and FAILOVER_RETRY_S on a Cluster or a Sentinel-managed primary.
    """

    def __init__(
        self,
        client: RedisClient,
        library: Library | None = None,
        on_reload: Callable[[], None] | None = None,
        *,
        durability: DurableWriter | None = None,
        failover_retry_s: float | None = None,
        format_key: str | None = None,
    ) -> None:
        self._client: Any = client
        # The stored-format version key, read once before the first call (None: done, or not
        # checked here: a read replica's runtime). budgetkit._core.storeformat.
        self._format_key = format_key
        self.topology: Topology = topology_of(client)
        self._cluster = self.topology == "cluster"
        self.library = library if library is not None else load_library()
        self._functions = {
            name: self.library.function(name, guarded=self._cluster)
            for name in self.library.operations
        }
        self._loaded = False  # this runtime saw the server run (or load) the library
        self._on_reload = on_reload
        self.durability = durability
        if failover_retry_s is None:
            failover_retry_s = 0.0 if self.topology == "single" else FAILOVER_RETRY_S
        self.failover_retry_s = failover_retry_s
        self._primary_checked = 0.0
        self._primary: object = None  # Sentinel: the primary's address as last seen here
        self.reloads = 0
        self.failover_retries = 0  # calls retried after a not-run error (cluster/sentinel)
        self.resends = 0  # calls sent again after their reply was lost (budgetkit._core.redelivery)
        if isinstance(client, RedisCluster) and client.retry.get_retries() > 0:
            log.warning(
                "budgetkit: this RedisCluster client retries commands after connection errors; "
                "request records keep every mutation exactly-once, but they are kept longer "
                "for it (budgetkit._core.redelivery). BudgetKit.from_url builds clients "
                "without retries"
            )

    @property
    def operations(self) -> frozenset[str]:
        return self.library.operations

    @property
    def client(self) -> Any:
        return self._client

    async def verify_format(self) -> None:
        """Before the first call: StoreFormatMismatch unless this release reads the store's
        stored-format version (budgetkit._core.storeformat); then never again. A client whose
        ACL may not read the key (a worker confined to one organization) does not check it."""
        key = self._format_key
        if key is None:
            return
        try:
            found = await self.stored_format(key)
        except PermissionDenied as error:  # an ACL confined to some organizations' keys
            log.info(
                "budgetkit: stored-format version not checked, %s may not be read: %s", key, error
            )
        else:
            verify(key, found)
        self._format_key = None

    async def stored_format(self, key: str) -> int | None:
        """The store's stored-format version under ``key`` (None: not recorded)."""
        return parse_format(key, await self.send(["GET", key]))

    async def send(self, command: Sequence[ScriptArg]) -> Any:
        """One plain command (the format key, library admin), errors translated: a connection
        failure is BudgetUnavailable (these commands are safe to send again)."""
        try:
            return await self._client.execute_command(*command)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
            refused = refusal(str(command[0]), error)  # credentials, DB index, LOADING...
            raise refused or BudgetUnavailable(f"cannot reach Redis: {error}") from error
        except (redis_errors.RedisError, redis_errors.RedisClusterException) as error:
            raise translate_error(str(command[0]), error) from error

    async def load_everywhere(self) -> None:
        """Loads the library on the server (on a Cluster: on every primary, each required)."""
        for node in self._nodes():
            await self._load(node)

    def _nodes(self) -> list[Any]:
        return list(self._client.get_primaries()) if self._cluster else [None]

    async def library_names(self) -> set[str]:
        """The budgetkit function libraries on the server (every primary of a Cluster)."""
        names: set[str] = set()
        for node in self._nodes():
            command = ["FUNCTION", "LIST", "LIBRARYNAME", f"{LIBRARY_PREFIX}_*"]
            options = {} if node is None else {"target_nodes": node}
            try:
                listed = await self._client.execute_command(*command, **options)
            except (redis_errors.RedisError, redis_errors.RedisClusterException) as error:
                raise translate_error("FUNCTION LIST", error) from error
            for library in listed:
                fields = (
                    library
                    if isinstance(library, dict)
                    else dict(zip(library[::2], library[1::2], strict=True))
                )
                name = fields.get(b"library_name", fields.get("library_name"))
                if isinstance(name, bytes):
                    name = name.decode()
                if isinstance(name, str) and name.startswith(f"{LIBRARY_PREFIX}_"):
                    names.add(name)
        return names

    async def delete_libraries(self, names: Sequence[str]) -> None:
        """``FUNCTION DELETE`` of each of ``names`` wherever it is loaded."""
        for node in self._nodes():
            options = {} if node is None else {"target_nodes": node}
            for name in names:
                try:
                    await self._client.execute_command("FUNCTION", "DELETE", name, **options)
                except redis_errors.ResponseError as error:
                    if "not found" not in str(error).lower():
                        raise translate_error("FUNCTION DELETE", error) from error

    def command(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], readonly: bool = False
    ) -> list[ScriptArg]:
        """The FCALL (``readonly``: FCALL_RO) command of one call, with the Cluster guard key."""
        function = self._functions.get(name)
        if function is None:
            raise ScriptError(f"no operation {name!r} in the library")
        if self._cluster and keys:
            keys = [*keys, guard_key(keys[0])]
        return ["FCALL_RO" if readonly else "FCALL", function, len(keys), *keys, *args]

    async def call(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], readonly: bool = False
    ) -> Any:
        """Runs one operation atomically; returns its raw reply. ``readonly`` uses FCALL_RO
        (allowed on replicas; the operation must be registered ``no-writes``).

        A call whose connection closed after sending (ReplyLost) is sent again, at most
        RESENDS_MAX times: every mutation carries its request record (budgetkit._core.redelivery),
        so a resend returns the first reply instead of applying twice, and the other scripts
        only read or roll periods over. A timeout is not resent (the server may be stuck: the
        caller should not wait twice). When a resend cannot reach Redis the first outcome stays
        unknown: OutcomeUnknown."""
        if self._format_key is not None:
            await self.verify_format()
        try:
            return await self._call_following_failover(name, keys, args, readonly)
        except ReplyLost as error:
            lost: OutcomeUnknown = error
        for _ in range(RESENDS_MAX):
            self.resends += 1
            try:
                return await self._call_following_failover(name, keys, args, readonly)
            except ReplyLost as error:
                lost = error
            except OutcomeUnknown as error:  # timed out this time: give up
                raise error from None
            except BudgetUnavailable:
                break  # not sent this time; the first send may still have applied
        raise OutcomeUnknown(str(lost)) from lost

    async def _call_following_failover(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], readonly: bool
    ) -> Any:
        """One call; on a Cluster or Sentinel, calls that provably did not run are retried
        for at most ``failover_retry_s`` seconds, re-discovering the topology in between."""
        if self.failover_retry_s <= 0:
            return await self._call(name, keys, args, readonly)
        delay, deadline = FAILOVER_DELAY_FIRST_S, 0.0
        while True:
            await self.refresh_primary()
            try:
                return await self._call(name, keys, args, readonly)
            except OutcomeUnknown:
                await self.refresh_primary(force=True)
                raise
            except BudgetUnavailable as error:
                if not passing(error):  # a refusal no failover ends (ACL, credentials)
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.failover_retry_s
                if now + delay > deadline:
                    raise
            self.failover_retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, FAILOVER_DELAY_MAX_S)
            await self.refresh_primary(force=True)

    async def _call(
        self, name: str, keys: Sequence[str], args: Sequence[ScriptArg], readonly: bool
    ) -> Any:
        durable = self.durability is not None and not readonly and self.durability.covers(name)
        for attempt in range(LOAD_RETRIES_MAX + 1):
            # FCALL first and FUNCTION LOAD only when the server lacks the library, so a worker
            # whose ACL lacks FUNCTION LOAD runs a library an operator loaded.
            command = self.command(name, keys, args, readonly=readonly)
            try:
                if durable:
                    assert self.durability is not None
                    reply = await self.durability.run(self._client, command, keys[0])
                else:
                    reply = await self._client.execute_command(*command)
                self._loaded = True  # the server has it: a later "not found" is a reload
                return reply
            except BudgetkitError:
                raise
            except (redis_errors.ResponseError, redis_errors.RedisClusterException) as error:
                if missing_function(error) and attempt < LOAD_RETRIES_MAX:
                    await self._reload(keys)
                    continue
                twin = self._read_only_twin(name, error)
                if twin is not None:
                    return await self._call(twin, keys, args, True)
                if missing_function(error):
                    raise ScriptError(f"function {name} vanished again after loading") from None
                raise translate_error(name, error) from None
            except redis_errors.RedisError as error:
                raise translate_error(name, error) from error
        raise AssertionError("unreachable")

    def recoverable(self, name: str, error: BaseException) -> bool:
        """A pipelined call's error that ``call`` recovers from when the call is sent alone: a
        missing library, a check refused for a write it may not need (see the module doc)."""
        return missing_function(error) or self._read_only_twin(name, error) is not None

    def _read_only_twin(self, name: str, error: BaseException) -> str | None:
        twin = READ_ONLY_TWINS.get(name)
        if twin is None or not isinstance(error, redis_errors.ResponseError):
            return None
        refused = refusal(name, error)
        if refused is None or refused.server_error is None:
            return None
        return twin if reply_code(refused.server_error) in TWIN_REFUSALS else None

    async def _reload(self, keys: Sequence[str]) -> None:
        if self._loaded:  # a reload (flush, restart, new node), not the first load
            self.reloads += 1
            if self._on_reload is not None:
                self._on_reload()
        node = self._client.get_node_from_key(keys[0]) if self._cluster and keys else None
        await self._load(node)

    async def ensure_loaded(self, name: str | None = None) -> None:
        """Loads the library unless this runtime already saw the server run or load it
        (``name``: an operation the caller is about to run; checked to exist)."""
        if name is not None and name not in self._functions:
            raise ScriptError(f"no operation {name!r} in the library")
        if not self._loaded:
            await self._load(None)

    async def _load(self, node: object) -> None:
        """``FUNCTION LOAD REPLACE`` on the server, on every Cluster primary, or on ``node``."""
        command = ["FUNCTION", "LOAD", "REPLACE", self.library.source]
        try:
            if self._cluster:
                target = node if node is not None else RedisCluster.PRIMARIES
                await self._client.execute_command(*command, target_nodes=target)
            else:
                await self._client.execute_command(*command)
        except (redis_errors.RedisError, redis_errors.RedisClusterException) as error:
            if self._cluster and node is None:
                # Best effort on every primary: a node that missed it answers "not found"
                # and gets the library then, on its own.
                log.debug("budgetkit: FUNCTION LOAD on the cluster: %s", error)
                self._loaded = True
                return
            if isinstance(error, redis_errors.ConnectionError | redis_errors.TimeoutError):
                raise BudgetUnavailable(f"cannot reach Redis: {error}") from error
            raise translate_error("FUNCTION LOAD", error) from error
        self._loaded = True

    async def refresh_primary(self, force: bool = False) -> None:
        """Sentinel: re-read the primary's address, at most every SENTINEL_REFRESH_S unless
        ``force``. When it moved, idle connections to the old primary are closed (redis-py)
        and busy ones are closed when released (redis-py alone would keep reusing them until
        the old primary is demoted — up to the sentinels' 10 s INFO period, while it still
        accepts writes that the demotion then discards)."""
        if self.topology != "sentinel":
            return
        now = time.monotonic()
        if not force and now - self._primary_checked < SENTINEL_REFRESH_S:
            return
        self._primary_checked = now
        pool = self._client.connection_pool
        try:
            address = await pool.get_master_address()
        except redis_errors.RedisError as error:  # the call itself will say what is wrong
            log.debug("budgetkit: sentinel discovery failed: %s", error)
            return
        before, self._primary = self._primary, address
        if before is not None and address != before:
            # (compared with what this runtime saw last: a new connection may already have
            # updated the pool's own record without touching the busy connections)
            log.warning("budgetkit: the primary moved from %s to %s", before, address)
            await pool.update_active_connections_for_reconnect()
