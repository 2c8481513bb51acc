"""BudgetKit: the async client. Validates, converts to micro-units, builds keys, runs one script.

Data flows one way: caller → validate and convert → one EVALSHA → Lua → flat reply → models.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal, TypedDict, Unpack, cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.client import Redis as BlockingRedis
from redis.cluster import RedisCluster as BlockingCluster

from budgetkit._core import convert
from budgetkit._core.amounts import from_micros, to_micros
from budgetkit._core.batching import ScriptBatcher
from budgetkit._core.cancellation import raise_if_cancelling
from budgetkit._core.checkcache import (
    CANARY_EVERY_DEFAULT,
    CheckCache,
    CheckCacheStats,
    Ticket,
)
from budgetkit._core.durability import MUTATIONS, Durability, DurableWriter
from budgetkit._core.errors import (
    BudgetNotFound,
    BudgetUnavailable,
    InvalidInput,
    OutcomeUnknown,
    UnpricedModel,
)
from budgetkit._core.ids import (
    new_budget_id,
    new_hold_id,
    new_ledger_id_base,
    normalize_currency,
    parse_budget_id,
    parse_hold_id,
    validate_identifier,
)
from budgetkit._core.keys import Keyspace, ScopeKeys
from budgetkit._core.metering import meter_for_charge
from budgetkit._core.models import (
    Budget,
    BudgetCheckResult,
    BudgetEvent,
    BudgetPeriod,
    BudgetStatus,
    BudgetSubjectType,
    BudgetToolResponse,
    LedgerEntry,
    ToolStatus,
    trusted,
)
from budgetkit._core.observability import Instrument, Instruments
from budgetkit._core.redelivery import AUTO_FINGERPRINT, KEEP_FOREVER_MS, request_window_ms
from budgetkit._core.replies import (
    EventRecord,
    Levels,
    Reply,
    ms_to_datetime,
    parse_entries,
    parse_reply,
    text_of,
)
from budgetkit._core.results import DebitResult, Reservation
from budgetkit._core.rules import (
    BudgetSnapshot,
    check_result,
    insufficient_result,
    tool_response,
    with_root_session_note,
)
from budgetkit._core.runtime import ScriptArg, ScriptRuntime, translate_error
from budgetkit._core.scope import Scope
from budgetkit._core.spend import SpendGuard
from budgetkit._core.storeformat import MigrationResult
from budgetkit._core.storeformat import migrate as migrate_store
from budgetkit._core.urls import ConnectionOptions, RedisClient, client_from_url

log = logging.getLogger("budgetkit")
#: The writes whose replies show their scope's budgets: the caller caches the scope from them.
SCOPE_WRITES = frozenset({"debit", "commit", "reserve"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Amount = int | float | Decimal
Clock = Callable[[], datetime]
#: An advisory check rule: sees the scope, the atomic result and the budgets' snapshots, and may
#: return a stricter (or any) result to use instead; None keeps the result.
CheckRule = Callable[[Scope, BudgetCheckResult, Sequence[BudgetSnapshot]], BudgetCheckResult | None]
FailurePolicy = Literal["fail_closed", "fail_open"]
#: How amounts with more than 6 decimals are read: rounded half-up to the micro-unit (SPEC §2),
#: or rejected.
AmountsMode = Literal["round", "strict"]

DEFAULT_WARN_FRACTION = 0.2
BUDGETS_PER_SUBJECT_MAX = 16
LEDGER_PAGE_MAX = 1000
LIST_PAGE_MAX = 1000
EVENTS_BATCH_MAX = 100
EVENTS_BLOCK_MS_MAX = 60_000
DEFAULT_IDEMPOTENCY_TTL_S = 86_400
SPEND_TTL_S = 120.0  # how long a spend guard's hold lives by default
IDEMPOTENCY_TTL_S_MAX = 30 * 86_400
UNAVAILABLE_CODE = "budget_unavailable"
NO_BUDGET_CODE = "no_budget"
NO_BUDGET_MESSAGE = "No budget covers this scope."


CHECK_ATTEMPTS_MAX = 2  # check is safe to retry: a rollover is never applied twice


@dataclass
class Counters:
    """What happened to this client's calls when Redis misbehaved (monotonic counts)."""

    fail_closed: int = 0  # checks answered stop because the store was unavailable
    fail_open: int = 0  # checks answered continue (flagged) because the store was unavailable
    unavailable: int = 0  # calls that could not reach Redis (not applied)
    outcome_unknown: int = 0  # calls whose reply was lost (maybe applied: retry with the key)
    check_retries: int = 0  # checks retried after a connection error


@dataclass(frozen=True, slots=True)
class _Usage:
    """What a charge records besides amounts (ledger fields) and its idempotency key."""

    meter_source: str
    ref_type: str | None
    ref_id: str | None
    description: str | None
    idempotency_key: str | None


#: A check of a scope without budgets when budgets are required (SPEC §10).
_NO_BUDGET = BudgetCheckResult(action="stop", message=NO_BUDGET_MESSAGE, error_code=NO_BUDGET_CODE)


def _unbudgeted(micros: Mapping[str, int], snapshots: Sequence[BudgetSnapshot]) -> list[str]:
    """Currencies of a charge (amount > 0) that no budget of the scope is in."""
    budgeted = {s.currency for s in snapshots}
    return sorted(c for c, amount in micros.items() if amount > 0 and c not in budgeted)


def _without_hold(
    snapshots: Sequence[BudgetSnapshot], micros: Mapping[str, int]
) -> list[BudgetSnapshot]:
    """The snapshots as they were before a just-granted hold of ``micros`` (SPEC §10: a
    reservation's own check never counts its own hold)."""
    out = []
    for s in snapshots:
        amount = micros.get(s.currency, 0)
        if amount > 0:
            s = replace(
                s, balance_micros=s.balance_micros + amount, held_micros=s.held_micros - amount
            )
        out.append(s)
    return out


class Unset(enum.Enum):
    """The type of ``UNSET``: an update parameter that was not given (``None`` clears)."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: Marks an update parameter that was not given (the field stays as it is).
UNSET: Final = Unset.UNSET


class KitOptions(TypedDict, total=False):
    """The keywords of ``BudgetKit(client, ...)`` (defaults and meaning there), as accepted by
    ``BudgetKit.from_url`` and the blocking client."""

    prefix: str
    clock: Clock | None
    failure_policy: FailurePolicy
    idempotency_ttl_seconds: int
    batching: bool
    instruments: Sequence[Instrument]
    read_replica: Redis | None
    durability: Durability | None
    amounts: AmountsMode
    require_budgets: bool


class BudgetKit:
    """Async budget enforcement on one Redis (single node; Cluster and Sentinel via from_url).

    ``clock``: None uses the Redis server's TIME (every replica agrees); tests pass a callable
    returning an aware UTC datetime. ``prefix`` namespaces every key. ``failure_policy``:
    ``fail_closed`` (default) makes check say stop when Redis is unreachable; ``fail_open`` says
    continue, flagged with ``fail_open=True``. ``idempotency_ttl_seconds``: how long idempotency
    records are kept (1 s .. 30 days). ``batching`` (default on): concurrent calls of this client
    share round trips (see budgetkit._core.batching); each call keeps its own atomicity and result.
    ``instruments``: metrics/tracing sinks (_core.observability); none by default, at no cost.
    ``read_replica``: a client of a replica; ``check`` and ``check_tool`` then run a read-only
    script there (rollovers evaluated in memory, nothing written) — stale by the replication lag.
    ``client``: a ``redis.asyncio.Redis`` (one server, or a Sentinel-managed primary) or a
    ``redis.asyncio.cluster.RedisCluster`` (see budgetkit._core.runtime for what changes there).
    ``durability``: a ``Durability(replicas, timeout_ms, aof)`` waits after each mutation until
    that many replicas acknowledged it (``WAIT``; ``aof``: ``WAITAOF``, Redis >= 7.2), else
    raises ReplicationTimeout (an OutcomeUnknown): see budgetkit._core.durability. None: off.
    ``amounts``: ``"round"`` (default) rounds every amount half-up to the micro-unit
    (``1500 * 3e-6`` charges 0.0045); ``"strict"`` rejects more than 6 decimals (SPEC §2).
    ``require_budgets``: a check of a scope with no non-disabled budget says stop
    (error_code ``no_budget``) and a reservation there is denied (SPEC §10); off by default.
    Every mutation applies exactly once, whoever retries it (budgetkit._core.redelivery).
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "bk",
        clock: Clock | None = None,
        failure_policy: FailurePolicy = "fail_closed",
        idempotency_ttl_seconds: int = DEFAULT_IDEMPOTENCY_TTL_S,
        batching: bool = True,
        instruments: Sequence[Instrument] = (),
        read_replica: Redis | None = None,
        durability: Durability | None = None,
        amounts: AmountsMode = "round",
        require_budgets: bool = False,
    ) -> None:
        for field, given in (("client", client), ("read_replica", read_replica)):
            if isinstance(given, BlockingRedis | BlockingCluster):  # a sync client fails late
                wanted = "redis.asyncio." + (
                    "cluster.RedisCluster" if isinstance(given, BlockingCluster) else "Redis"
                )
                raise InvalidInput(
                    f"{field} is a blocking {type(given).__module__}.{type(given).__name__}; "
                    f"budgetkit.BudgetKit is async and needs a {wanted} "
                    "(in blocking code, use budgetkit.sync.BudgetKit)"
                )
        if failure_policy not in ("fail_closed", "fail_open"):
            raise InvalidInput("failure_policy must be 'fail_closed' or 'fail_open'")
        ttl = idempotency_ttl_seconds
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int)
            or not 1 <= ttl <= IDEMPOTENCY_TTL_S_MAX
        ):
            raise InvalidInput(f"idempotency_ttl_seconds must be in [1, {IDEMPOTENCY_TTL_S_MAX}]")
        self._idempotency_ttl_ms = ttl * 1000
        if amounts not in ("round", "strict"):
            raise InvalidInput("amounts must be 'round' or 'strict'")
        self._strict = amounts == "strict"
        if not isinstance(require_budgets, bool):
            raise InvalidInput("require_budgets must be True or False")
        self._require_budgets = require_budgets
        self._request_window_ms = request_window_ms(client)
        self._client: Any = client
        self._keys = Keyspace(prefix)
        self._clock = clock
        self._policy = failure_policy
        self._instruments = Instruments(instruments)
        on_reload, on_batch = self._instruments.script_reloaded, self._instruments.batch_sent
        if durability is not None and not isinstance(durability, Durability):
            raise InvalidInput("durability must be a budgetkit.Durability or None")
        writer = None if durability is None else DurableWriter(durability)
        self._runtime = ScriptRuntime(
            client,
            on_reload=on_reload,
            durability=writer,
            format_key=self._keys.store_format(),
        )
        self._batcher = (
            ScriptBatcher(client, self._runtime, on_batch=on_batch) if batching else None
        )
        self._rules: list[CheckRule] = []
        self._dispatch = self._batcher.call if self._batcher is not None else self._runtime.call
        self._replica = None if read_replica is None else ScriptRuntime(read_replica)
        self._check_cache: CheckCache | None = None
        self.counters = Counters()

    @classmethod
    def from_url(
        cls, url: str, *, connection: ConnectionOptions | None = None, **options: Unpack[KitOptions]
    ) -> BudgetKit:
        """A client for ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://h:p,h:p``
        and ``redis+sentinel://h:p,h:p/service`` URLs (_core.urls). ``connection``: timeouts
        (how long a call waits for an unreachable or silent server) and the pool size
        (``ConnectionOptions``; None: its defaults). ``options``: the class's keywords."""
        settings = connection or ConnectionOptions()
        if not isinstance(settings, ConnectionOptions):
            raise InvalidInput("connection must be a budgetkit.ConnectionOptions or None")
        client = client_from_url(
            url,
            socket_timeout_s=settings.socket_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            max_connections=settings.max_connections,
        )
        return cls(client, **options)

    @property
    def redis(self) -> Redis:
        """The client given (a ``RedisCluster`` on a Cluster, typed as ``Redis``)."""
        return cast(Redis, self._client)

    @property
    def keys(self) -> Keyspace:
        """A read-only view of the key names this client reads and writes (its prefix)."""
        return self._keys

    async def __aenter__(self) -> BudgetKit:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.disable_check_cache()
        await self._client.aclose()

    # -- the check cache ----------------------------------------------------------------------

    async def enable_check_cache(
        self, heartbeat_ms: int = 50, *, canary_every: int = CANARY_EVERY_DEFAULT
    ) -> None:
        """From now on ``check`` and ``check_tool`` answer from memory when the scope's budgets
        are cached and current, else make the round trip and cache its reply (issue 17;
        docs/check-cache.md). Exact: the same answers as without it, after this kit's own
        writes at once, after other clients' writes within Redis's invalidation latency; a
        period rollover or hold expiry is never answered from memory. Costs one tracking
        connection (on a Cluster: one per primary owning an organization checked) and a
        heartbeat write every ``heartbeat_ms`` (5 .. 10,000) per connection: when a heartbeat
        comes back later than two of them, nothing is served until tracking is proven again.
        ``canary_every`` (0 .. 10^9; 0: off): every that many answers from memory, one check
        is also sent to Redis in the background and compared (``CheckCacheStats.canary_*``).
        One server, a Sentinel primary or a Cluster; BudgetUnavailable when the server cannot
        track (fakeredis)."""
        if self._check_cache is not None:
            raise InvalidInput("the check cache is already enabled")
        if isinstance(heartbeat_ms, bool) or not isinstance(heartbeat_ms, int):
            raise InvalidInput("heartbeat_ms must be an int")
        cache = CheckCache(
            self._client,
            self._keys,
            heartbeat_ms,
            canary_every=canary_every,
            round_trip=self._fresh_check,
        )
        await cache.start()
        self._check_cache = cache
        self._instruments.check_cache_enabled(cache.stats)

    async def disable_check_cache(self) -> None:
        """Stops the check cache (its connection and heartbeat); checks make round trips."""
        cache, self._check_cache = self._check_cache, None
        if cache is not None:
            await cache.stop()
            self._instruments.check_cache_disabled(cache.stats)

    def check_cache_stats(self) -> CheckCacheStats | None:
        """The check cache's counters (hits, misses, fills, invalidations, lease expiries,
        canary checks...); None when it is not enabled."""
        return None if self._check_cache is None else self._check_cache.stats()

    async def _fresh_check(self, scoped: ScopeKeys) -> Reply:
        """One check.lua round trip of a scope on the primary, never cached nor retried (each
        attempt of ``_check_round_trip``; the cache's canary)."""
        keys, args = [*scoped.subjects, scoped.events], self._common_args("", scoped.org)
        return await self._run("check", keys, args, snapshots=True, levels=scoped.levels)

    def _after_write(
        self,
        reply: Reply,
        org_key: str,
        fill: tuple[ScopeKeys, Ticket | None] | None = None,
    ) -> None:
        """The kit's own write came back: cached scopes showing a budget it wrote are dropped
        (they were dropped before sending too: ``_raw``); ``fill``: the write's scope, cached
        from its reply (CheckCache.written)."""
        cache = self._check_cache
        if cache is None:
            return
        ids = [s.budget_id for s in reply.snapshots] + [b.id for b in reply.budgets]
        keys = [Keyspace.budget_under(org_key, bid) for bid in ids]
        if fill is None:
            cache.written(keys)
        else:
            scoped, ticket = fill
            cache.written(keys, (scoped, reply, ticket))

    # -- plumbing ---------------------------------------------------------------------------

    def _now_arg(self) -> str:
        if self._clock is None:
            return ""
        now = self._clock()
        if now.tzinfo is None:
            raise InvalidInput("the clock must return a timezone-aware datetime")
        return str((now - EPOCH) // timedelta(milliseconds=1))  # exact: no float on the way

    def _common_args(self, organization_id: str, org_key: str | None = None) -> list[ScriptArg]:
        """The organization's key prefix (``org_key`` when known), the clock, a new ledger id
        base (also the call's request id)."""
        org = org_key if org_key is not None else self._keys.org(organization_id)
        return [org, self._now_arg(), new_ledger_id_base()]

    async def _raw(self, name: str, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
        """One script call's raw reply, through the batcher (or the runtime), measured by the
        instruments; the calls Redis could not answer are counted and logged."""
        if self._check_cache is not None and name in MUTATIONS:
            self._check_cache.drop(keys)  # the scope's subject keys, a budget's key
        with self._instruments.call(name):
            try:
                return await self._dispatch(name, keys, args)
            except BudgetUnavailable as error:
                self._count_failure(name, error)
                raise

    def _count_failure(self, name: str, error: BudgetUnavailable) -> None:
        if isinstance(error, OutcomeUnknown):
            self.counters.outcome_unknown += 1
            log.warning("budgetkit %s: outcome unknown: %s", name, error)
            return
        self.counters.unavailable += 1
        log.warning("budgetkit %s: store unavailable: %s", name, error)

    async def _run(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
        snapshots: bool = False,
        levels: Levels = (),
    ) -> Reply:
        """One script call's decoded reply (the shared shape of lua/_lib.lua)."""
        raw = await self._raw(name, keys, args)
        reply = parse_reply(raw, snapshots=snapshots, levels=levels)
        if self._check_cache is not None and name in MUTATIONS and name not in SCOPE_WRITES:
            self._after_write(reply, str(args[0]))
        return reply

    def _mutation(
        self,
        organization_id: str,
        operation: str,
        key: object = None,
        request: object = None,
        *,
        keep: bool = False,
        org_key: str | None = None,
    ) -> tuple[list[ScriptArg], str, list[ScriptArg]]:
        """The common args, the request record key and its (fingerprint, ttl_ms) args of one
        mutating call (budgetkit._core.redelivery: a call sent twice applies once).

        With an idempotency ``key`` the record is scoped per organization and operation kind,
        its fingerprint a SHA-256 of the canonical ``request`` (the same key with another request
        is detected), kept for the idempotency TTL (``keep``: for good). Without one, the record
        is the call's own (its random ledger id base), kept for the redelivery window, and
        ``request`` is not read (callers pass None then). ``org_key``: as ``_common_args``.
        """
        common = self._common_args(organization_id, org_key)
        if key is None:
            request_id = str(common[2]).removeprefix("ledger_")
            record = self._keys.request(organization_id, request_id)
            return common, record, [AUTO_FINGERPRINT, self._request_window_ms]
        name = validate_identifier(key, field="idempotency_key")
        canonical = json.dumps([operation, request], sort_keys=True, separators=(",", ":"))
        fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        ttl_ms = KEEP_FOREVER_MS if keep else self._idempotency_ttl_ms
        record = self._keys.idempotency(organization_id, operation, name)
        return common, record, [fingerprint, ttl_ms]

    def _scope(self, scope: Scope) -> ScopeKeys:
        """The scope's keys and levels (computed once per scope: Keyspace.scope)."""
        if not isinstance(scope, Scope):
            raise InvalidInput("scope must be a budgetkit.Scope")
        return self._keys.scope(scope)

    def _scope_keys(self, scope: Scope, only: tuple[str, ...] | None = None) -> list[str]:
        """The subject keys of the scope's (``only``) levels, then the event stream's key."""
        if only is None:
            scoped = self._scope(scope)
            return [*scoped.subjects, scoped.events]
        if not isinstance(scope, Scope):
            raise InvalidInput("scope must be a budgetkit.Scope")
        org = scope.organization_id
        subjects = [self._keys.subject(org, lvl, sid) for lvl, sid in scope.levels(only)]
        return [*subjects, self._keys.events(org)]

    def _budget_keys(self, organization_id: object, budget_id: object) -> tuple[str, str, str]:
        org = validate_identifier(organization_id, field="organization_id")
        bid = parse_budget_id(budget_id)
        return org, bid, self._keys.budget(org, bid)

    # -- budgets ----------------------------------------------------------------------------

    async def create_budget(
        self,
        organization_id: str,
        subject_type: str | BudgetSubjectType,
        subject_id: str,
        currency: str,
        limit: Amount,
        soft_limit: Amount | None = None,
        period: BudgetPeriod | Mapping[str, Any] | str | None = None,
        metadata: Any = None,
        warn_fraction: Amount = DEFAULT_WARN_FRACTION,
        thresholds: Sequence[Amount] | None = None,
        idempotency_key: str | None = None,
        rollover_max: Amount | None = None,
    ) -> Budget:
        """Creates a budget with ``balance = limit``; amounts in currency units.

        ``period``: a BudgetPeriod, its JSON-shaped dict, or a string as the CLI takes it
        (``"month"``, ``"30d"``, ``"12h"``). ``thresholds``: extra warning levels as fractions of
        the limit spent (e.g. [0.5, 0.8, 0.95]); each emits one ``budget.threshold`` event per
        period when the spend reaches it. ``idempotency_key``: a setup script run again with the
        same key gets the budget it created the first time (``get_budget``'s current view; kept
        for the budget's lifetime), never a second one; the same key with other arguments raises
        IdempotencyConflict. ``rollover_max`` (periodic budgets; SPEC §11): at each reset the
        unused balance, up to this amount, is carried into the next period.

        A session-level budget applies to scopes whose *root* session is ``subject_id``: child
        sessions (``Scope(root_session_id=...)``) pool on their root's budgets, and a budget made
        for a child session's own id is not enforced while its scopes name a root (SPEC §6).
        """
        org = validate_identifier(organization_id, field="organization_id")
        kind = BudgetSubjectType.parse(subject_type).as_wire()
        sid = validate_identifier(subject_id, field="subject_id")
        if kind == "org" and sid != org:
            raise InvalidInput("an org-level budget must have subject_id == organization_id")
        limit_micros = convert.limit_micros(limit, strict=self._strict)
        soft = convert.soft_micros(soft_limit, limit_micros, strict=self._strict)
        bid = new_budget_id()
        fields: list[ScriptArg] = [
            org,
            kind,
            sid,
            normalize_currency(currency),
            str(limit_micros),
            soft,
            str(convert.warn_fraction_ppm(warn_fraction)),
            *convert.period_args(period),
            convert.metadata_json(metadata),
            str(BUDGETS_PER_SUBJECT_MAX),
            convert.thresholds_text(thresholds),
        ]
        roll = convert.rollover_text(rollover_max, strict=self._strict)
        common, record, record_args = self._mutation(
            org, "create", idempotency_key, [*fields, roll], keep=True
        )
        keys = [
            self._keys.budget(org, bid),
            self._keys.subject(org, kind, sid),
            self._keys.org_index(org),
            self._keys.events(org),
            record,
        ]
        args = [*common[:2], bid, *fields, *record_args, roll]
        reply = await self._run("create", keys, args)
        created = reply.budgets[0]
        if reply.replayed:  # the budget as it is now, not as it was created
            return await self.get_budget(org, created.id)
        return created.to_budget()

    async def get_budget(self, organization_id: str, budget_id: str) -> Budget:
        """One budget of the organization; BudgetNotFound for unknown or foreign ids."""
        org, bid, key = self._budget_keys(organization_id, budget_id)
        with _budget_named(org, bid):
            reply = await self._run("get", [key, self._keys.events(org)], self._common_args(org))
        return reply.budgets[0].to_budget()

    async def list_budgets(
        self,
        organization_id: str,
        subject_type: str | BudgetSubjectType | None = None,
        subject_id: str | None = None,
        include_disabled: bool = False,
        limit: int = 200,
        offset: int = 0,
    ) -> list[Budget]:
        """The organization's budgets, newest first, filtered and paginated."""
        org = validate_identifier(organization_id, field="organization_id")
        kind = "" if subject_type is None else BudgetSubjectType.parse(subject_type).as_wire()
        sid = "" if subject_id is None else validate_identifier(subject_id, field="subject_id")
        page_size, skip = convert.page_bounds(limit, offset, LIST_PAGE_MAX)
        if not isinstance(include_disabled, bool):
            raise InvalidInput("include_disabled must be True or False")
        keys = [self._keys.org_index(org), self._keys.events(org)]
        args = [*self._common_args(org), kind, sid, "1" if include_disabled else "0"]
        reply = await self._run("list", keys, [*args, str(page_size), str(skip)])
        return [record.to_budget() for record in reply.budgets]

    async def update_budget(
        self,
        organization_id: str,
        budget_id: str,
        *,
        limit: Amount | Unset = UNSET,
        soft_limit: Amount | Unset | None = UNSET,
        status: str | BudgetStatus | Unset = UNSET,
        period: BudgetPeriod | Mapping[str, Any] | str | Unset | None = UNSET,
        metadata: Any = UNSET,
        warn_fraction: Amount | Unset = UNSET,
        thresholds: Sequence[Amount] | Unset | None = UNSET,
        rollover_max: Amount | Unset | None = UNSET,
    ) -> Budget:
        """Changes the given fields; an explicit None clears soft_limit, period, metadata,
        thresholds or rollover_max. New thresholds fire at once when the spend already reaches
        them."""
        org, bid, key = self._budget_keys(organization_id, budget_id)
        common, record, record_args = self._mutation(org, "update")
        strict = self._strict
        patch: dict[str, object] = {}
        limit_micros = None
        if not isinstance(limit, Unset):
            limit_micros = convert.limit_micros(limit, strict=strict)
            patch["limit"] = str(limit_micros)
        if not isinstance(soft_limit, Unset):
            patch["soft_limit"] = convert.soft_micros(soft_limit, limit_micros, strict=strict)
        if not isinstance(status, Unset):
            patch["status"] = self._settable_status(status)
        if not isinstance(period, Unset):
            patch["period"] = [str(arg) for arg in convert.period_args(period)]
        if not isinstance(warn_fraction, Unset):
            patch["warn_fraction_ppm"] = str(convert.warn_fraction_ppm(warn_fraction))
        if not isinstance(metadata, Unset):
            patch["metadata"] = convert.metadata_json(metadata)
        if not isinstance(thresholds, Unset):
            patch["thresholds"] = convert.thresholds_text(thresholds)
        if not isinstance(rollover_max, Unset):
            patch["rollover_max"] = convert.rollover_text(rollover_max, strict=strict)
        args = [*common, json.dumps(patch, separators=(",", ":")), *record_args]
        with _budget_named(org, bid):
            reply = await self._run("update", [key, self._keys.events(org), record], args)
        return reply.budgets[0].to_budget()

    @staticmethod
    def _settable_status(value: object) -> str:
        status = BudgetStatus.parse(value)
        if status is BudgetStatus.EXHAUSTED:
            raise InvalidInput("status exhausted cannot be set; it is derived from the balance")
        return status.value

    async def disable_budget(self, organization_id: str, budget_id: str) -> Budget:
        """Disables a budget: it is never debited or checked until set active again."""
        return await self.update_budget(organization_id, budget_id, status="disabled")

    async def top_up(
        self,
        organization_id: str,
        budget_id: str,
        amount: Amount,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> Budget:
        """Credits ``amount`` (> 0, currency units) to the balance; may exceed the limit."""
        org, bid, key = self._budget_keys(organization_id, budget_id)
        micros = to_micros(amount, field="amount", allow_zero=False, strict=self._strict)
        text = convert.free_text(description, field="description")
        common, record, record_args = self._mutation(
            org, "top_up", idempotency_key, [bid, micros, text]
        )
        args = [*common, *record_args, str(micros), text]
        with _budget_named(org, bid):
            reply = await self._run("top_up", [key, self._keys.events(org), record], args)
        return reply.budgets[0].to_budget()

    # -- enforcement ------------------------------------------------------------------------

    async def _check_reply(self, scope: Scope) -> Reply | None:
        """The scope's snapshots (check.lua, or check_ro.lua on the read replica); None when the
        store stays unavailable after CHECK_ATTEMPTS_MAX tries."""
        scoped = self._scope(scope)
        cache = self._check_cache
        if cache is None or self._replica is not None:  # a replica's reply is never cached
            return await self._check_round_trip(scope, scoped)
        now_ms = None if self._clock is None else int(self._now_arg())
        answer = cache.lookup(scoped, now_ms) or await cache.joined(scoped, now_ms)
        if answer is not None:
            return answer
        ticket = cache.ticket(scope.organization_id)
        flight = cache.take_off(scoped, ticket)
        reply = None
        try:
            reply = await self._check_round_trip(scope, scoped)
            if reply is not None:
                cache.fill(scoped, reply, ticket)
            return reply
        finally:
            cache.land(scoped, flight, reply)

    async def _check_round_trip(self, scope: Scope, scoped: ScopeKeys) -> Reply | None:
        """check.lua (check_ro.lua on the read replica), tried CHECK_ATTEMPTS_MAX times."""
        for attempt in range(1, CHECK_ATTEMPTS_MAX + 1):
            try:
                if self._replica is not None:
                    keys = [*scoped.subjects, scoped.events]
                    args = self._common_args(scope.organization_id, scoped.org)
                    raw = await self._replica.call("check_ro", keys, args, readonly=True)
                    return parse_reply(raw, snapshots=True, levels=scoped.levels)
                return await self._fresh_check(scoped)
            except BudgetUnavailable as error:
                if attempt < CHECK_ATTEMPTS_MAX:
                    self.counters.check_retries += 1
                    continue
                log.warning("budget store unavailable, %s: %s", self._policy, error)
        return None

    def _unavailable_result(self) -> BudgetCheckResult:
        """What check says when the store is unavailable: the failure policy's answer."""
        if self._policy == "fail_open":
            self.counters.fail_open += 1
            self._instruments.check_decided("continue", self._policy)
            return BudgetCheckResult(action="continue", fail_open=True)
        self.counters.fail_closed += 1
        self._instruments.check_decided("stop", self._policy)
        return BudgetCheckResult(
            action="stop",
            message="Budget store unavailable. Try again later.",
            error_code=UNAVAILABLE_CODE,
        )

    def _verdict(self, snapshots: Sequence[BudgetSnapshot]) -> BudgetCheckResult:
        """The check result of a scope's snapshots (no budget: stop when budgets are required)."""
        if not snapshots and self._require_budgets:
            return _NO_BUDGET
        return check_result(snapshots)

    async def check(self, scope: Scope) -> BudgetCheckResult:
        """The most restrictive action over the scope's budgets (one round trip; never raises
        for an unreachable store: the failure policy decides). ``result.subject_type`` and
        ``subject_id`` name the level whose budget decided (e.g. the one to resume)."""
        reply = await self._check_reply(scope)
        if reply is None:
            return self._unavailable_result()
        result = self._verdict(reply.snapshots)
        for rule in self._rules:
            result = rule(scope, result, reply.snapshots) or result
        self._instruments.check_decided(result.action)
        return result

    def add_check_rule(self, rule: CheckRule) -> None:
        """Adds a custom Python rule run by ``check`` on its result, in the order added.

        Advisory, not atomic: it runs in this process after the script returned, sees the
        budgets as they were at that instant, and changes neither statuses, nor events, nor the
        books — other replicas without the rule do not see its effect. Use it to be stricter
        (e.g. stop agents of a tier at 50 % spent), never to enforce money limits; the
        built-in rules and thresholds in the scripts are the enforcement.
        """
        self._rules.append(rule)

    async def check_tool(self, scope: Scope) -> BudgetToolResponse:
        """The check_budget tool's response for an agent (one round trip). When the scope names
        a root session, the hint says that the root session's budgets apply (SPEC §6)."""
        reply = await self._check_reply(scope)
        if reply is None:
            policy = self._unavailable_result()
            status: ToolStatus = "active" if policy.action == "continue" else "exhausted"
            return BudgetToolResponse(status=status, budgets=[], hint=policy.message)
        if not reply.snapshots and self._require_budgets:
            return BudgetToolResponse(status="no_budgets", budgets=[], hint=NO_BUDGET_MESSAGE)
        response = tool_response(reply.snapshots)
        return with_root_session_note(response, scope)

    async def debit(
        self,
        scope: Scope,
        amounts: Mapping[str, Amount],
        meter_source: str = "manual",
        ref_type: str | None = None,
        ref_id: str | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> DebitResult:
        """Charges every non-disabled budget of the scope its currency's amount, atomically.

        ``amounts``: currency -> amount in currency units (>= 0; rounded half-up to the
        micro-unit unless the kit is strict). A currency no budget of the scope is in is listed
        in ``result.unbudgeted``. Applies exactly once, also when a reply is lost and the call is
        sent again; ``idempotency_key`` extends that to the caller's own retries.
        """
        micros = convert.amounts_micros(amounts, strict=self._strict)
        usage = _Usage(meter_source, ref_type, ref_id, description, idempotency_key)
        return await self._charge(scope, micros, usage)

    async def _charge(
        self,
        scope: Scope,
        micros: Mapping[str, int],
        usage: _Usage,
        hold_id: str | None = None,
        unpriced: Sequence[str] = (),
    ) -> DebitResult:
        """The one charge path: debit.lua, or commit.lua of ``hold_id``. ``unpriced``:
        currencies the usage could not be priced in (a budget of the scope in one of them
        makes the script refuse the call, writing nothing)."""
        operation = "debit" if hold_id is None else "commit"
        unpriced_text = convert.unpriced_text(unpriced)
        scoped = self._scope(scope)
        org = scope.organization_id
        fields = convert.usage_fields(
            scope, usage.meter_source, usage.ref_type, usage.ref_id, usage.description
        )
        key = usage.idempotency_key
        request = None
        if key is not None:  # the canonical request, fingerprinted with the key
            target: object = list(scoped.subjects) if hold_id is None else hold_id
            request = [target, fields, sorted(micros.items()), unpriced_text]
        common, record, record_args = self._mutation(
            org, operation, key, request, org_key=scoped.org
        )
        held = [] if hold_id is None else [hold_id]
        hold_key = [] if hold_id is None else [self._keys.hold(org, hold_id)]
        args = [
            *common,
            *record_args,
            *held,
            *fields,
            unpriced_text,
            *convert.amount_args(micros),
        ]
        script_keys = [*scoped.subjects, *hold_key, record, scoped.events]
        levels = scoped.levels
        cache = self._check_cache
        ticket = None if cache is None else cache.ticket(org)
        reply = await self._run(operation, script_keys, args, snapshots=True, levels=levels)
        if cache is not None:  # the reply shows the scope as the write left it
            self._after_write(reply, scoped.org, (scoped, ticket))
        return trusted(  # = DebitResult(...) without validating what was just built
            DebitResult,
            check=self._verdict(reply.snapshots),
            entries=reply.ledger_entries(),
            events=reply.budget_events(org),
            unbudgeted=_unbudgeted(micros, reply.snapshots),
            replayed=reply.replayed,
        )

    async def reserve(
        self,
        scope: Scope,
        amounts: Mapping[str, Amount],
        ttl_seconds: float = 60,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Holds ``amounts`` on every budget of the scope, or denies and writes nothing.

        Granted iff every non-disabled budget with an amount in its currency is neither
        exhausted nor paused and can cover it from its available balance (balance minus the
        holds already outstanding). The hold expires after ``ttl_seconds`` (0 < ttl ≤ 7 days).
        A granted hold's ``check`` is the scope's check without this hold (SPEC §10).
        """
        micros = convert.amounts_micros(amounts, strict=self._strict)
        ttl_ms = convert.ttl_ms(ttl_seconds)
        scoped = self._scope(scope)
        org = scope.organization_id
        hold_id = new_hold_id()
        request = None
        if idempotency_key is not None:  # the canonical request, fingerprinted with the key
            request = [list(scoped.subjects), sorted(micros.items()), ttl_ms, scope.session_id]
        common, record, record_args = self._mutation(
            org, "reserve", idempotency_key, request, org_key=scoped.org
        )
        args: list[ScriptArg] = [
            *common,
            *record_args,
            hold_id,
            str(ttl_ms),
            scope.session_id or "",
            "1" if self._require_budgets else "0",
            *convert.amount_args(micros),
        ]
        hold_key = self._keys.hold(org, hold_id)
        cache = self._check_cache
        ticket = None if cache is None else cache.ticket(org)
        raw = await self._raw("reserve", [*scoped.subjects, hold_key, record, scoped.events], args)
        reply = parse_reply(raw, tags=3, snapshots=True, levels=scoped.levels)
        if cache is not None:  # the reply shows the scope as the reservation left it
            self._after_write(reply, scoped.org, (scoped, ticket))
        verdict, ident, expires = reply.tags
        snapshots = reply.snapshots
        amounts_out = {currency: from_micros(m) for currency, m in micros.items()}
        if verdict == "denied":
            check = _NO_BUDGET
            if ident:  # the budget that cannot cover its amount
                denied = next(s for s in snapshots if s.budget_id == ident)
                check = insufficient_result(denied, micros[denied.currency])
            self._instruments.reservation_decided(False, check.error_code)
            return trusted(
                Reservation, granted=False, scope=scope, amounts=amounts_out, check=check
            )
        self._instruments.reservation_decided(True, None)
        return trusted(  # = Reservation(...) without validating what was just built
            Reservation,
            granted=True,
            id=ident,
            scope=scope,
            amounts=amounts_out,
            expires_at=ms_to_datetime(int(expires)),
            check=check_result(_without_hold(snapshots, micros)),
            replayed=reply.replayed,
        )

    async def commit(
        self,
        hold: Reservation | str,
        actual: Mapping[str, Amount],
        meter_source: str = "manual",
        ref_type: str | None = None,
        ref_id: str | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
        *,
        scope: Scope | None = None,
    ) -> DebitResult:
        """Settles a granted hold: debits ``actual`` (may exceed the hold) and drops the hold.

        ``hold``: the Reservation reserve() returned (or its id, with the ``scope`` it was
        made for). Raises HoldNotFound when the hold was already committed or released,
        HoldExpired after its TTL — then record the usage with ``debit``.
        """
        hold_id, hold_scope = self._granted_hold(hold, scope)
        micros = convert.amounts_micros(actual, strict=self._strict)
        usage = _Usage(meter_source, ref_type, ref_id, description, idempotency_key)
        return await self._charge(hold_scope, micros, usage, hold_id=hold_id)

    async def release(
        self, hold: Reservation | str, *, organization_id: str | None = None
    ) -> list[Budget]:
        """Drops a granted hold; returns the budgets it was on (with their new holds).

        ``hold``: the Reservation reserve() returned, or its id with ``organization_id``."""
        if isinstance(hold, str):
            if organization_id is None:
                raise InvalidInput("release by hold id needs organization_id")
            hold_id = parse_hold_id(hold)
            org = validate_identifier(organization_id, field="organization_id")
        else:
            hold_id, hold_scope = self._granted_hold(hold, None)
            org = hold_scope.organization_id
        common, record, record_args = self._mutation(org, "release")
        keys = [self._keys.hold(org, hold_id), self._keys.events(org), record]
        reply = await self._run("release", keys, [*common, hold_id, *record_args])
        return [record.to_budget() for record in reply.budgets]

    @staticmethod
    def _granted_hold(hold: object, scope: Scope | None) -> tuple[str, Scope]:
        if isinstance(hold, str):
            if not isinstance(scope, Scope):
                raise InvalidInput("commit by hold id needs the scope the hold was made for")
            return parse_hold_id(hold), scope
        if not isinstance(hold, Reservation):
            raise InvalidInput("hold must be a Reservation returned by reserve() or a hold id")
        if not hold.granted or hold.id is None:
            raise InvalidInput("this reservation was denied: there is nothing to commit or release")
        return parse_hold_id(hold.id), hold.scope

    async def record_usage(
        self,
        scope: Scope,
        usage: Any,
        *,
        meter: Any = None,
        currencies: Sequence[str] | None = None,
        hold: Reservation | None = None,
        meter_source: str = "llm_tokens",
        ref_type: str | None = "llm_generation",
        ref_id: str | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> DebitResult:
        """Meters one usage record (an LlmUsage by default) and debits it — or commits ``hold``
        with it — in one round trip. See budgetkit.metering.meter_for_charge.

        Why a ``currencies`` argument: the client does not know the scope's budget currencies
        without another round trip, so it meters the given ones (default ``("usd", "tokens",
        "credits")``). Under the default LLM policy an unpriced model with no provider cost
        raises UnpricedModel, writing nothing, when a usd budget is in the scope.
        """
        if not isinstance(scope, Scope):
            raise InvalidInput(f"scope must be a Scope, got {type(scope).__name__}")
        if hold is not None and (not isinstance(hold, Reservation) or hold.scope != scope):
            raise InvalidInput("hold must be a Reservation of the same scope")
        metered = meter_for_charge(usage, meter=meter, currencies=currencies)
        fields = _Usage(meter_source, ref_type, ref_id, description, idempotency_key)
        hold_id = None if hold is None else self._granted_hold(hold, None)[0]
        try:
            return await self._charge(scope, metered.micros, fields, hold_id, metered.unpriced)
        except UnpricedModel:
            if metered.unpriced_error is None:
                raise
            raise metered.unpriced_error from None  # the model's message says what to configure

    def spend(
        self,
        scope: Scope,
        estimate: Mapping[str, Amount] | Any,
        *,
        ttl_seconds: float = SPEND_TTL_S,
        meter_source: str = "llm_tokens",
        ref_type: str | None = None,
        ref_id: str | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
        meter: Any = None,
        currencies: Sequence[str] | None = None,
    ) -> SpendGuard:
        """A spend guard (SPEC §12): ``async with kit.spend(scope, estimate) as s:`` reserves
        the estimate (amounts, or a usage record such as an LlmUsage with the prompt and the
        maximum output tokens, priced by ``meter``; denied: BudgetExceeded, nothing held);
        ``await s.record(usage)`` adds usage as it happens; on exit the recorded total is
        committed in one call (it may exceed the estimate), or the hold released when nothing
        was recorded — also when the block raises or is cancelled (then the exception
        propagates). ``s.result`` is the DebitResult. The other keywords as ``commit`` and
        ``record_usage``; ``idempotency_key`` keys the reservation and the charge."""
        usage = _Usage(meter_source, ref_type, ref_id, description, idempotency_key)
        return SpendGuard(
            self,
            scope,
            estimate,
            ttl_seconds=ttl_seconds,
            usage=usage,
            meter=meter,
            currencies=currencies,
        )

    async def resume(self, scope: Scope, levels: Sequence[str] = ("session",)) -> list[Budget]:
        """Resumes the paused budgets of the scope's given levels; returns those resumed.

        ``levels``: subject types, e.g. ``[check.subject_type]`` to resume the level whose
        budget paused the scope (by default only the root session's own budgets)."""
        if isinstance(levels, str) or not isinstance(levels, Sequence) or not levels:
            raise InvalidInput("levels must be a non-empty sequence of subject types")
        wanted = tuple(BudgetSubjectType.parse(level).as_wire() for level in levels)
        keys = self._scope_keys(scope, wanted)
        common, record, record_args = self._mutation(scope.organization_id, "resume")
        script_keys = [*keys[:-1], record, keys[-1]]
        reply = await self._run("resume", script_keys, [*common, *record_args])
        return [record.to_budget() for record in reply.budgets]

    async def ledger(
        self, organization_id: str, budget_id: str, limit: int = 50, offset: int = 0
    ) -> list[LedgerEntry]:
        """A page of the budget's ledger, newest first."""
        org, bid, key = self._budget_keys(organization_id, budget_id)
        page_size, skip = convert.page_bounds(limit, offset, LEDGER_PAGE_MAX)
        keys = [key, self._keys.ledger(org, bid)]
        with _budget_named(org, bid):
            raw = await self._raw("ledger", keys, [str(page_size), str(skip)])
        currency, records = parse_entries(raw)
        return [record.to_entry(currency) for record in records]

    async def migrate(self, *, prune_libraries: bool = False) -> MigrationResult:
        """Brings the store up to this release's stored format (``budgetkit.STORE_FORMAT``),
        loads this release's function library on every primary and records the version, so
        clients of other formats refuse the store (``StoreFormatMismatch``) instead of misreading
        it. ``prune_libraries``: also deletes other budgetkit versions' libraries (a worker of
        such a version still running loads its own again on its next call). Run it once per
        deploy, from one process; running it again changes nothing."""
        async with _redis_errors("migrate"):
            return await migrate_store(
                self._runtime,
                self._keys.prefix,
                self._keys.store_format(),
                prune=prune_libraries,
            )

    async def trim_history(
        self,
        organization_id: str,
        *,
        events_max_len: int | None = None,
        ledger_max_len: int | None = None,
    ) -> int:
        """Caps the organization's event stream and every budget's ledger (oldest dropped).

        Off by default: everything is kept. Trimmed ledger entries are gone from Redis, so the
        invariant balance == limit - Σ ledger can then only be checked against exported books.
        Returns the number of stream entries removed. Bounded: one XTRIM per budget.
        """
        org = validate_identifier(organization_id, field="organization_id")
        events_cap = None if events_max_len is None else convert.stream_cap(events_max_len)
        ledger_cap = None if ledger_max_len is None else convert.stream_cap(ledger_max_len)
        removed = 0
        async with _redis_errors("trim_history"):
            pipe = self._client.pipeline(transaction=False)
            if events_cap is not None:
                pipe.xtrim(self._keys.events(org), maxlen=events_cap, approximate=False)
            if ledger_cap is not None:
                ids: list[Any] = await self._client.zrange(self._keys.org_index(org), 0, -1)
                for raw in ids:
                    ledger = self._keys.ledger(org, text_of(raw))
                    pipe.xtrim(ledger, maxlen=ledger_cap, approximate=False)
            for count in await pipe.execute():
                removed += int(count)
        return removed

    async def events(
        self,
        organization_id: str,
        after: str | None = None,
        *,
        follow: bool = False,
        block_ms: int = 1000,
    ) -> AsyncIterator[BudgetEvent]:
        """The organization's events after stream id ``after`` (None: from the first).

        By default the iterator ends when it has caught up with the stream. With
        ``follow=True`` it tails the stream instead: it waits for new events, ``block_ms`` per
        XREAD (1 .. 60,000 ms), until the caller stops it by breaking out. Any number of
        replicas can read the same stream.
        """
        org = validate_identifier(organization_id, field="organization_id")
        if after is not None and not convert.is_stream_id(after):
            raise InvalidInput("after must be an event id like '1700000000000-0' (or None)")
        if isinstance(block_ms, bool) or not isinstance(block_ms, int):
            raise InvalidInput("block_ms must be an int")
        if not 1 <= block_ms <= EVENTS_BLOCK_MS_MAX:
            raise InvalidInput(f"block_ms must be in [1, {EVENTS_BLOCK_MS_MAX}]")
        key = self._keys.events(org)
        last = after or "0-0"
        while True:
            block = block_ms if follow else None
            async with _redis_errors("events"):
                batches: Any = await self._client.xread(
                    {key: last}, count=EVENTS_BATCH_MAX, block=block
                )
            raise_if_cancelling()  # one redis-py swallowed (budgetkit._core.cancellation)
            if not batches:
                if follow:
                    continue
                return
            for raw_id, raw_fields in batches[0][1]:
                fields = {text_of(k): text_of(v) for k, v in raw_fields.items()}
                last = text_of(raw_id)
                yield EventRecord.from_stream(last, fields).to_event(org)


@contextlib.contextmanager
def _budget_named(organization_id: str, budget_id: str) -> Iterator[None]:
    """BudgetNotFound in the caller's words (budget and organization), not a Redis key."""
    try:
        yield
    except BudgetNotFound:
        raise BudgetNotFound(
            f"budget {budget_id} not found in organization {organization_id}"
        ) from None


@contextlib.asynccontextmanager
async def _redis_errors(operation: str) -> AsyncIterator[None]:
    """The error seam for the few plain (non-script) reads and trims: redis-py's errors become
    budgetkit's (these calls are safe to retry, so a lost connection is just unavailable)."""
    try:
        yield
    except (redis_errors.RedisError, redis_errors.RedisClusterException) as error:
        failure = translate_error(operation, error)  # refusals too: budgetkit._core.store_errors
        if type(failure) is OutcomeUnknown:
            failure = BudgetUnavailable(f"{operation}: cannot reach Redis: {error}")
        if failure is error:
            raise
        raise failure from error
