"""The blocking facade: ``budgetkit.sync.BudgetKit`` has the async client's methods, without await.

For Celery, RQ, threads and scripts. It owns one event loop on a private daemon thread and runs
every call of the async core there (``asyncio.run_coroutine_threadsafe``), so it duplicates no
logic and is thread-safe: any number of threads may call it at once, and their calls are batched
by the core like concurrent tasks. Each call waits at most ``call_timeout_s``.

Every public method of ``budgetkit.BudgetKit`` is spelled out here with the same signature and
docstring (``tests/test_sync_api.py`` keeps them equal), so ``help()``, IDEs and mypy see them;
``aclose`` is ``close`` here, and ``events`` is a plain iterator. After ``close()`` every call
raises ``ClientClosed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeVar, Unpack

from budgetkit._core.checkcache import CANARY_EVERY_DEFAULT, CheckCacheStats
from budgetkit._core.client import (
    DEFAULT_WARN_FRACTION,
    EVENTS_BATCH_MAX,
    SPEND_TTL_S,
    UNSET,
    Amount,
    CheckRule,
    Counters,
    KitOptions,
    Unset,
)
from budgetkit._core.client import BudgetKit as AsyncBudgetKit
from budgetkit._core.errors import BudgetUnavailable, ClientClosed, InvalidInput
from budgetkit._core.keys import Keyspace
from budgetkit._core.models import (
    Budget,
    BudgetCheckResult,
    BudgetEvent,
    BudgetPeriod,
    BudgetStatus,
    BudgetSubjectType,
    BudgetToolResponse,
    LedgerEntry,
)
from budgetkit._core.results import DebitResult, Reservation
from budgetkit._core.scope import Scope
from budgetkit._core.spend import SpendGuard as AsyncSpendGuard
from budgetkit._core.storeformat import MigrationResult
from budgetkit._core.urls import ConnectionOptions, RedisClient, client_from_url

T = TypeVar("T")

CALL_TIMEOUT_S = 30.0
CLOSED_MESSAGE = "this budgetkit.sync.BudgetKit is closed"


class SpendGuard:
    """The blocking spend guard: ``with kit.spend(scope, estimate) as s: s.record(usage)``.

    The async guard's steps run on the facade's loop thread (budgetkit._core.spend): entering
    reserves (denied: BudgetExceeded), ``record`` adds usage, leaving commits what was recorded
    (or releases the hold) — also when the block raises. ``hold`` and ``result`` as there.
    """

    def __init__(
        self, guard: AsyncSpendGuard, run: Callable[[Coroutine[Any, Any, Any]], Any]
    ) -> None:
        self._guard = guard
        self._run = run

    @property
    def hold(self) -> Reservation | None:
        return self._guard.hold

    @property
    def result(self) -> DebitResult | None:
        return self._guard.result

    @property
    def recorded(self) -> dict[str, float]:
        return self._guard.recorded

    def __enter__(self) -> SpendGuard:
        self._run(self._guard.__aenter__())
        return self

    def record(self, usage: Mapping[str, Amount] | Any) -> None:
        """Adds usage: amounts per currency, or a usage record (metered like record_usage)."""
        self._run(self._guard.record(usage))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return bool(self._run(self._guard.__aexit__(exc_type, exc, traceback)))


class BudgetKit:
    """Blocking budgetkit client; same constructor keywords and methods as the async one."""

    def __init__(
        self,
        client_factory: Callable[[], RedisClient],
        *,
        call_timeout_s: float = CALL_TIMEOUT_S,
        **options: Unpack[KitOptions],
    ) -> None:
        """``client_factory`` builds the redis.asyncio client (it is called on the loop
        thread, where its connections live); ``options`` are the async BudgetKit's keywords."""
        self._timeout_s = call_timeout_s
        # Orders "closed?" checks and submissions against close(); reentrant, as a collected
        # events iterator may close its stream (_discard) while this thread holds it.
        self._lock = threading.RLock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="budgetkit-sync", daemon=True
        )
        self._thread.start()

        async def build() -> AsyncBudgetKit:
            client = client_factory()
            try:
                return AsyncBudgetKit(client, **options)
            except BaseException:
                await client.aclose()
                raise

        try:
            self._kit: AsyncBudgetKit = self._run(build())
        except BaseException:
            self._closed = True
            self._stop_loop()
            raise

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connection: ConnectionOptions | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S,
        **options: Unpack[KitOptions],
    ) -> BudgetKit:
        """Like ``budgetkit.BudgetKit.from_url`` (same URLs, ``connection`` and keywords);
        ``call_timeout_s`` bounds how long each blocking call waits for its answer."""
        settings = connection or ConnectionOptions()
        if not isinstance(settings, ConnectionOptions):
            raise InvalidInput("connection must be a budgetkit.ConnectionOptions or None")

        def client_factory() -> RedisClient:
            client: RedisClient = client_from_url(
                url,
                socket_timeout_s=settings.socket_timeout_s,
                connect_timeout_s=settings.connect_timeout_s,
                max_connections=settings.max_connections,
            )
            return client

        return cls(client_factory, call_timeout_s=call_timeout_s, **options)

    @property
    def async_kit(self) -> AsyncBudgetKit:
        """The async core (its keys, runtime, counters, batcher); it lives on the facade's
        loop thread, so await nothing of it from another event loop."""
        return self._kit

    @property
    def counters(self) -> Counters:
        """The core's live counts of calls that met a misbehaving Redis (read, do not write)."""
        return self._kit.counters

    @property
    def keys(self) -> Keyspace:
        """The keyspace: the name of every key this client reads or writes."""
        return self._kit.keys

    # -- plumbing ---------------------------------------------------------------------------

    def _core(self) -> AsyncBudgetKit:
        """The async core, to build one call's coroutine; raises ClientClosed after close(),
        before any coroutine exists (so none is left never awaited)."""
        if self._closed:
            raise ClientClosed(CLOSED_MESSAGE)
        return self._kit

    def _run(self, coroutine: Coroutine[Any, Any, T], *, bounded: bool = True) -> T:
        """Runs ``coroutine`` on the loop thread and waits for its result: at most
        ``call_timeout_s`` when ``bounded``, else for as long as it takes (a tailing stream)."""
        with self._lock:
            if self._closed:  # closed by another thread since _core(): discard, never await
                coroutine.close()
                raise ClientClosed(CLOSED_MESSAGE)
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            done, _ = concurrent.futures.wait([future], self._timeout_s if bounded else None)
        except BaseException:  # e.g. KeyboardInterrupt while a tail waits: stop the call
            future.cancel()
            raise
        if not done:
            future.cancel()
            raise BudgetUnavailable(f"no answer within {self._timeout_s} s")
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ClientClosed(
                "the client was closed while this call ran (a write may or may not have been "
                "applied: retry on a new client with the same idempotency key)"
            ) from None

    def _iterate(self, stream: AsyncIterator[T], follow: bool) -> Iterator[T]:
        """Steps the async ``stream`` on the loop thread: batches of up to EVENTS_BATCH_MAX
        while reading what is there (each step bounded by ``call_timeout_s``); one item per
        step when it tails, each waiting as long as the stream waits."""
        count_max = 1 if follow else EVENTS_BATCH_MAX
        finished = False
        try:
            while not finished:
                batch, finished = self._run(_take(stream, count_max), bounded=not follow)
                yield from batch
        finally:
            if not finished:
                self._discard(stream)

    def _discard(self, stream: AsyncIterator[Any]) -> None:
        """Closes an abandoned stream on the loop, without waiting (it may be the loop thread
        that drops it); after close() the loop has already closed every stream."""
        with self._lock:
            if not self._closed:
                asyncio.run_coroutine_threadsafe(_aclose(stream), self._loop)

    async def _shutdown(self) -> None:
        """On the loop: cancels the calls still running, closes the core's connections and
        finalizes the async streams still open."""
        current = asyncio.current_task()
        running = [task for task in asyncio.all_tasks() if task is not current]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        try:
            await self._kit.aclose()
        finally:
            await asyncio.get_running_loop().shutdown_asyncgens()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self._timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def close(self) -> None:
        """Closes the connections and stops the loop thread (idempotent).

        Every later call raises ClientClosed. Calls still running in other threads are
        cancelled and raise ClientClosed too.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            done, _ = concurrent.futures.wait([future], self._timeout_s)
            if not done:
                future.cancel()
                raise BudgetUnavailable(f"close: no answer within {self._timeout_s} s")
            future.result()
        finally:
            self._stop_loop()

    def __enter__(self) -> BudgetKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the async client's methods, blocking (same order, signatures and docstrings) -------

    def create_budget(
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
        return self._run(
            self._core().create_budget(
                organization_id=organization_id,
                subject_type=subject_type,
                subject_id=subject_id,
                currency=currency,
                limit=limit,
                soft_limit=soft_limit,
                period=period,
                metadata=metadata,
                warn_fraction=warn_fraction,
                thresholds=thresholds,
                idempotency_key=idempotency_key,
                rollover_max=rollover_max,
            )
        )

    def get_budget(self, organization_id: str, budget_id: str) -> Budget:
        """One budget of the organization; BudgetNotFound for unknown or foreign ids."""
        return self._run(
            self._core().get_budget(organization_id=organization_id, budget_id=budget_id)
        )

    def list_budgets(
        self,
        organization_id: str,
        subject_type: str | BudgetSubjectType | None = None,
        subject_id: str | None = None,
        include_disabled: bool = False,
        limit: int = 200,
        offset: int = 0,
    ) -> list[Budget]:
        """The organization's budgets, newest first, filtered and paginated."""
        return self._run(
            self._core().list_budgets(
                organization_id=organization_id,
                subject_type=subject_type,
                subject_id=subject_id,
                include_disabled=include_disabled,
                limit=limit,
                offset=offset,
            )
        )

    def update_budget(
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
        return self._run(
            self._core().update_budget(
                organization_id=organization_id,
                budget_id=budget_id,
                limit=limit,
                soft_limit=soft_limit,
                status=status,
                period=period,
                metadata=metadata,
                warn_fraction=warn_fraction,
                thresholds=thresholds,
                rollover_max=rollover_max,
            )
        )

    def disable_budget(self, organization_id: str, budget_id: str) -> Budget:
        """Disables a budget: it is never debited or checked until set active again."""
        return self._run(
            self._core().disable_budget(organization_id=organization_id, budget_id=budget_id)
        )

    def top_up(
        self,
        organization_id: str,
        budget_id: str,
        amount: Amount,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> Budget:
        """Credits ``amount`` (> 0, currency units) to the balance; may exceed the limit."""
        return self._run(
            self._core().top_up(
                organization_id=organization_id,
                budget_id=budget_id,
                amount=amount,
                description=description,
                idempotency_key=idempotency_key,
            )
        )

    def enable_check_cache(
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
        self._run(
            self._core().enable_check_cache(heartbeat_ms=heartbeat_ms, canary_every=canary_every)
        )

    def disable_check_cache(self) -> None:
        """Stops the check cache (its connection and heartbeat); checks make round trips."""
        self._run(self._core().disable_check_cache())

    def check_cache_stats(self) -> CheckCacheStats | None:
        """The check cache's counters (hits, misses, fills, invalidations, lease expiries,
        canary checks...); None when it is not enabled."""
        return self._core().check_cache_stats()

    def check(self, scope: Scope) -> BudgetCheckResult:
        """The most restrictive action over the scope's budgets (one round trip; never raises
        for an unreachable store: the failure policy decides). ``result.subject_type`` and
        ``subject_id`` name the level whose budget decided (e.g. the one to resume)."""
        return self._run(self._core().check(scope=scope))

    def add_check_rule(self, rule: CheckRule) -> None:
        """Adds a custom Python rule run by ``check`` on its result, in the order added.

        Advisory, not atomic: it runs in this process after the script returned, sees the
        budgets as they were at that instant, and changes neither statuses, nor events, nor the
        books — other replicas without the rule do not see its effect. Use it to be stricter
        (e.g. stop agents of a tier at 50 % spent), never to enforce money limits; the
        built-in rules and thresholds in the scripts are the enforcement.
        """
        self._core().add_check_rule(rule=rule)

    def check_tool(self, scope: Scope) -> BudgetToolResponse:
        """The check_budget tool's response for an agent (one round trip). When the scope names
        a root session, the hint says that the root session's budgets apply (SPEC §6)."""
        return self._run(self._core().check_tool(scope=scope))

    def debit(
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
        return self._run(
            self._core().debit(
                scope=scope,
                amounts=amounts,
                meter_source=meter_source,
                ref_type=ref_type,
                ref_id=ref_id,
                description=description,
                idempotency_key=idempotency_key,
            )
        )

    def reserve(
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
        return self._run(
            self._core().reserve(
                scope=scope,
                amounts=amounts,
                ttl_seconds=ttl_seconds,
                idempotency_key=idempotency_key,
            )
        )

    def commit(
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
        return self._run(
            self._core().commit(
                hold=hold,
                actual=actual,
                meter_source=meter_source,
                ref_type=ref_type,
                ref_id=ref_id,
                description=description,
                idempotency_key=idempotency_key,
                scope=scope,
            )
        )

    def release(
        self, hold: Reservation | str, *, organization_id: str | None = None
    ) -> list[Budget]:
        """Drops a granted hold; returns the budgets it was on (with their new holds).

        ``hold``: the Reservation reserve() returned, or its id with ``organization_id``."""
        return self._run(self._core().release(hold=hold, organization_id=organization_id))

    def record_usage(
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
        return self._run(
            self._core().record_usage(
                scope=scope,
                usage=usage,
                meter=meter,
                currencies=currencies,
                hold=hold,
                meter_source=meter_source,
                ref_type=ref_type,
                ref_id=ref_id,
                description=description,
                idempotency_key=idempotency_key,
            )
        )

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
        ``record_usage``; ``idempotency_key`` keys the reservation and the charge.
        """
        guard = self._core().spend(
            scope,
            estimate,
            ttl_seconds=ttl_seconds,
            meter_source=meter_source,
            ref_type=ref_type,
            ref_id=ref_id,
            description=description,
            idempotency_key=idempotency_key,
            meter=meter,
            currencies=currencies,
        )
        return SpendGuard(guard, self._run)

    def resume(self, scope: Scope, levels: Sequence[str] = ("session",)) -> list[Budget]:
        """Resumes the paused budgets of the scope's given levels; returns those resumed.

        ``levels``: subject types, e.g. ``[check.subject_type]`` to resume the level whose
        budget paused the scope (by default only the root session's own budgets)."""
        return self._run(self._core().resume(scope=scope, levels=levels))

    def ledger(
        self, organization_id: str, budget_id: str, limit: int = 50, offset: int = 0
    ) -> list[LedgerEntry]:
        """A page of the budget's ledger, newest first."""
        return self._run(
            self._core().ledger(
                organization_id=organization_id, budget_id=budget_id, limit=limit, offset=offset
            )
        )

    def migrate(self, *, prune_libraries: bool = False) -> MigrationResult:
        """Brings the store up to this release's stored format (``budgetkit.STORE_FORMAT``),
        loads this release's function library on every primary and records the version, so
        clients of other formats refuse the store (``StoreFormatMismatch``) instead of misreading
        it. ``prune_libraries``: also deletes other budgetkit versions' libraries (a worker of
        such a version still running loads its own again on its next call). Run it once per
        deploy, from one process; running it again changes nothing."""
        return self._run(self._core().migrate(prune_libraries=prune_libraries))

    def trim_history(
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
        return self._run(
            self._core().trim_history(
                organization_id=organization_id,
                events_max_len=events_max_len,
                ledger_max_len=ledger_max_len,
            )
        )

    def events(
        self,
        organization_id: str,
        after: str | None = None,
        *,
        follow: bool = False,
        block_ms: int = 1000,
    ) -> Iterator[BudgetEvent]:
        """The organization's events after stream id ``after`` (None: from the first).

        By default the iterator ends when it has caught up with the stream. With
        ``follow=True`` it tails the stream instead: it waits for new events, ``block_ms`` per
        XREAD (1 .. 60,000 ms), until the caller stops it by breaking out. Any number of
        replicas can read the same stream.
        """
        stream = self._core().events(
            organization_id=organization_id, after=after, follow=follow, block_ms=block_ms
        )
        return self._iterate(stream, follow)


async def _take(stream: AsyncIterator[T], count_max: int) -> tuple[list[T], bool]:
    """Up to ``count_max`` items of ``stream``, and whether it has ended."""
    items: list[T] = []
    for _ in range(count_max):
        try:
            items.append(await anext(stream))
        except StopAsyncIteration:
            return items, True
    return items, False


async def _aclose(stream: AsyncIterator[Any]) -> None:
    if isinstance(stream, AsyncGenerator):
        await stream.aclose()


#: The blocking methods that mirror an awaited method of the async client (the test suite's
#: async-over-sync adapter routes these through threads); ``aclose`` is ``close`` here.
_METHODS = frozenset(
    name
    for name, member in vars(AsyncBudgetKit).items()
    if inspect.iscoroutinefunction(member) and not name.startswith("_") and name != "aclose"
)
