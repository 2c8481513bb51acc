"""An unavailable store (SPEC §4 "unavailable store", idempotency) on private real servers.

(a) **Connection refused** (the server is stopped): ``check``/``check_tool`` never raise; with
    ``fail_closed`` (the default) they say stop with error_code ``budget_unavailable``, with
    ``fail_open`` continue flagged ``fail_open=True``; mutations raise ``BudgetUnavailable``, not
    ``OutcomeUnknown`` (nothing was sent), and are not retried; every such call is counted in
    ``kit.counters`` and logged (logger ``budgetkit``). After a restart the same client works
    again (the function library persisted with the data) and nothing refused was applied.
(b) **Timeout** (the server stops answering: SIGSTOP, then SIGCONT): ``check`` answers the
    policy within ``3 x socket timeout x CHECK_ATTEMPTS_MAX`` (plus slack); a debit sent on a
    live connection raises ``OutcomeUnknown`` within about one socket timeout; once the server
    resumes it turns out applied at most once, and its retry with the same key replays.
(c) **Mid-call** (slow): SIGSTOP while concurrent debits are in flight, at several cut points:
    each call either succeeded or raised ``OutcomeUnknown``/``BudgetUnavailable``; after SIGCONT
    retrying the unknown ones with their keys leaves every call applied exactly once.

The server is always resumed (SIGCONT in ``finally``). Each test prints its numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from support import all_entries, assert_invariant

import budgetkit as bk
from budgetkit._core.client import CHECK_ATTEMPTS_MAX, UNAVAILABLE_CODE

pytestmark = pytest.mark.real

ORG = "org_unavail"
USER = "usr_unavail"
SESSION = "sess_unavail"
USER_LIMIT, ORG_LIMIT = 100, 1000
TIMEOUT_S = 0.5  # socket timeout of the clients in the SIGSTOP tests
SLACK_S = 1.0  # scheduling slack on top of the computed bounds
REFUSED_CALL_MAX_S = 1.0  # a refused connection answers at once: far below any timeout
RESUME_SETTLE_S = 0.2  # after SIGCONT, time for the server to run what was buffered
RETRY_ATTEMPTS_MAX = 3  # an outcome-unknown call is retried with its key up to this often
MID_CALL_TASKS = 48
MID_CALL_CUTS_S = (0.0, 0.002, 0.01, 0.05)  # SIGSTOP this long after the load starts
MID_CALL_DRAIN_S = 5 * TIMEOUT_S  # every task has met the stopped server by then


def scope(session: str = SESSION) -> bk.Scope:
    return bk.Scope(organization_id=ORG, session_id=session, user_id=USER)


async def create_budgets(kit: bk.BudgetKit) -> list[bk.Budget]:
    user = await kit.create_budget(ORG, "user", USER, "usd", USER_LIMIT)
    org = await kit.create_budget(ORG, "org", ORG, "usd", ORG_LIMIT)
    return [user, org]


async def entries_for(kit: bk.BudgetKit, budget: bk.Budget, ref_id: str) -> int:
    """Ledger entries of ``budget`` written by the call with this ref_id (= its key)."""
    return sum(e.ref_id == ref_id for e in await all_entries(kit, ORG, budget.id))


async def debit(kit: bk.BudgetKit, key: str, amount: float = 1.25) -> bk.DebitResult:
    """A debit whose ref_id is its idempotency key: the same request on every retry."""
    return await kit.debit(scope(), {"usd": amount}, ref_id=key, idempotency_key=key)


async def retry_until_answered(kit: bk.BudgetKit, key: str, amount: float) -> bk.DebitResult:
    """Retries with the key until the server answers (a retry may itself be outcome-unknown)."""
    for attempt in range(1, RETRY_ATTEMPTS_MAX + 1):
        try:
            return await debit(kit, key, amount)
        except bk.OutcomeUnknown:
            if attempt == RETRY_ATTEMPTS_MAX:
                raise
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def client(
    url: str, socket_timeout_s: float | None = None, **kwargs: Any
) -> AsyncIterator[bk.BudgetKit]:
    connection = (
        bk.ConnectionOptions()
        if socket_timeout_s is None
        else bk.ConnectionOptions(socket_timeout_s=socket_timeout_s)
    )
    kit = bk.BudgetKit.from_url(url, connection=connection, **kwargs)
    try:
        yield kit
    finally:
        await kit.aclose()


async def warm(kit: bk.BudgetKit) -> None:
    """Loads check and debit on the server and leaves one live pooled connection."""
    assert (await kit.check(scope())).error_code is None
    await kit.debit(scope(), {"usd": 0.5}, ref_id="warm-up")


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP the server for the block: it keeps its sockets (the kernel still accepts
    connections and buffers requests) but answers nothing. Always resumed."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def resumed(url: str) -> None:
    """Waits until the resumed server answers and has run what was buffered meanwhile."""
    raw = Redis.from_url(url)
    try:
        assert await raw.ping()
    finally:
        await raw.aclose()
    await asyncio.sleep(RESUME_SETTLE_S)


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "budgetkit" and r.levelno == logging.WARNING and text in r.getMessage()
    ]


# -- (a) connection refused ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
async def test_connection_refused(
    policy: str, redis_server_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="budgetkit")
    server = redis_server_factory(appendonly=True)  # data survives the stop/restart below
    async with (
        client(server.url, failure_policy=policy) as kit,
        client(server.url, failure_policy=policy) as fresh,
    ):
        budgets = await create_budgets(kit)
        await warm(kit)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.1)  # the client's event loop sees its pooled connection close

        outcomes: Counter[str] = Counter()
        for name, probe in (("warm", kit), ("fresh", fresh)):
            before = probe.counters.unavailable + probe.counters.outcome_unknown
            started = time.monotonic()
            result = await probe.check(scope())
            tool = await probe.check_tool(scope())
            elapsed = time.monotonic() - started
            assert elapsed < 2 * REFUSED_CALL_MAX_S, (name, elapsed)
            if policy == "fail_closed":
                assert result.action == "stop" and result.should_stop()
                assert result.error_code == UNAVAILABLE_CODE and not result.fail_open
                assert result.message and "unavailable" in result.message
                assert tool.status == "exhausted" and tool.budgets == []
                assert tool.hint == result.message
            else:
                assert result.action == "continue" and result.fail_open
                assert result.error_code is None and not result.should_stop()
                assert tool.status == "active" and tool.budgets == []
            counters = probe.counters
            assert getattr(counters, policy) == 2, (name, counters)  # check + check_tool
            assert getattr(counters, "fail_open" if policy == "fail_closed" else "fail_closed") == 0
            assert counters.check_retries == 2 * (CHECK_ATTEMPTS_MAX - 1), (name, counters)
            tried = counters.unavailable + counters.outcome_unknown - before
            assert tried == 2 * CHECK_ATTEMPTS_MAX, (name, counters)  # every attempt counted
            outcomes[f"{name} check"] = tried

            # Mutations: BudgetUnavailable (never sent, so not OutcomeUnknown), tried once.
            before_unavailable = counters.unavailable
            mutations = {
                "debit": debit(probe, f"refused-{name}"),
                "top_up": probe.top_up(ORG, budgets[0].id, 5, idempotency_key=f"top-{name}"),
                "reserve": probe.reserve(scope(), {"usd": 1}),
            }
            for op, call in mutations.items():
                started = time.monotonic()
                with pytest.raises(bk.BudgetUnavailable) as caught:
                    await call
                assert time.monotonic() - started < REFUSED_CALL_MAX_S, op
                assert not isinstance(caught.value, bk.OutcomeUnknown), (name, op, caught.value)
            assert counters.unavailable == before_unavailable + len(mutations), (name, counters)
            outcomes[f"{name} mutations"] = len(mutations)

        assert records(caplog, f"store unavailable, {policy}"), "the policy decision is logged"
        assert records(caplog, "store unavailable: cannot reach Redis"), "each failure is logged"

        # Back up (AOF kept the data and the function library): the same clients recover by
        # themselves, with nothing to load, and nothing refused was applied.
        reloads = kit._runtime.reloads
        await asyncio.to_thread(server.restart)
        assert (await kit.check(scope())).error_code is None
        assert kit._runtime.reloads == reloads, "the library is persisted with the data"
        assert (await fresh.check(scope())).error_code is None
        admin = kit  # its only connection was replaced after the refusals: no stale one left
        for budget in budgets:
            for name in ("warm", "fresh"):
                assert await entries_for(admin, budget, f"refused-{name}") == 0
            await assert_invariant(admin, ORG, budget.id, budget.limit)
        user = await admin.get_budget(ORG, budgets[0].id)
        assert user.balance == USER_LIMIT - 0.5  # the warm-up debit only: no top-up applied
        again = await debit(kit, "refused-warm")  # the refused call, sent now: applied once
        assert not again.replayed
        assert await entries_for(admin, budgets[0], "refused-warm") == 1
    print(
        f"\nconnection refused ({policy}): {sum(outcomes.values())} operations under fault "
        f"({dict(outcomes)}), violations: 0; counters warm {kit.counters}, fresh {fresh.counters}"
    )


async def test_connection_refused_concurrent_debits_are_unavailable(
    redis_server_factory: Callable[..., Any],
) -> None:
    """Concurrent debits share a pipeline (auto-batching): a refused connection means nothing
    was sent, so each must raise BudgetUnavailable, exactly as a lone debit does."""
    server = redis_server_factory()
    async with client(server.url) as kit:
        await create_budgets(kit)
        await warm(kit)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.1)
        lone = await asyncio.gather(debit(kit, "lone"), return_exceptions=True)
        batch = await asyncio.gather(
            *(debit(kit, f"batched-{i}") for i in range(8)), return_exceptions=True
        )
    kinds = Counter(type(r).__name__ for r in [*lone, *batch])
    print(f"\nconnection refused, 1 lone + 8 concurrent debits: {dict(kinds)}")
    assert kinds == Counter(BudgetUnavailable=9), kinds
    assert kit.counters.outcome_unknown == 0 and kit.counters.unavailable == 9, kit.counters


async def test_first_calls_after_restart_succeed(redis_server_factory: Callable[..., Any]) -> None:
    """After a restart the same client works: a call made once the server is back up is not
    'outcome unknown'. The pool holds connections the old server closed; they must be
    replaced, not used."""
    server = redis_server_factory(appendonly=True)
    async with client(server.url, batching=False) as kit:
        await create_budgets(kit)
        # Four concurrent unbatched calls leave four idle connections in the pool.
        await asyncio.gather(*(debit(kit, f"before-{i}") for i in range(4)))
        await asyncio.to_thread(server.restart)  # SIGTERM, start again: data kept (AOF)
        await asyncio.sleep(0.1)
        outcomes = []
        for i in range(4):
            try:
                await debit(kit, f"after-{i}")
                outcomes.append("ok")
            except bk.BudgetUnavailable as error:
                outcomes.append(f"{type(error).__name__}: {error}")
    print(f"\nfirst 4 debits after a restart: {outcomes}")
    assert outcomes == ["ok"] * 4, outcomes


# -- (b) timeout --------------------------------------------------------------------------------


async def test_timeout_server_stops_answering(redis_server_factory: Callable[..., Any]) -> None:
    server = redis_server_factory()
    check_bound = 3 * TIMEOUT_S * CHECK_ATTEMPTS_MAX + SLACK_S
    mutation_bound = 3 * TIMEOUT_S + SLACK_S  # mutations are not retried: one attempt
    timing: dict[str, float] = {}
    async with (
        client(server.url, socket_timeout_s=TIMEOUT_S) as closed,
        client(server.url, socket_timeout_s=TIMEOUT_S, failure_policy="fail_open") as open_,
        client(server.url, socket_timeout_s=TIMEOUT_S) as writer,
        client(server.url, socket_timeout_s=TIMEOUT_S) as fresh,
    ):
        budgets = await create_budgets(closed)
        for kit in (closed, open_, writer):
            await warm(kit)
        with stopped(server.pid):
            started = time.monotonic()
            result = await closed.check(scope())
            timing["check fail_closed"] = time.monotonic() - started
            assert result.action == "stop" and result.error_code == UNAVAILABLE_CODE

            started = time.monotonic()
            result = await open_.check(scope())
            timing["check fail_open"] = time.monotonic() - started
            assert result.action == "continue" and result.fail_open

            # Sent on a live connection, then silence: it may have been applied.
            started = time.monotonic()
            with pytest.raises(bk.OutcomeUnknown):
                await debit(writer, "silent-1", 2.5)
            timing["debit (sent)"] = time.monotonic() - started

            # A fresh client: the kernel accepts its connection while the server is stopped,
            # and its first command, the read of the stored-format version before any call
            # (budgetkit._core.storeformat), times out: the debit was never sent.
            started = time.monotonic()
            with pytest.raises(bk.BudgetUnavailable) as refused:
                await debit(fresh, "silent-fresh", 2.5)
            assert not isinstance(refused.value, bk.OutcomeUnknown), refused.value
            timing["debit (fresh client)"] = time.monotonic() - started
        await resumed(server.url)

        for kit, policy in ((closed, "fail_closed"), (open_, "fail_open")):
            counters = kit.counters
            assert getattr(counters, policy) == 1, counters
            assert counters.check_retries == CHECK_ATTEMPTS_MAX - 1, counters
            assert counters.outcome_unknown + counters.unavailable == CHECK_ATTEMPTS_MAX, counters
        assert writer.counters.outcome_unknown == 1 and writer.counters.unavailable == 0
        for name, seconds in timing.items():
            bound = check_bound if name.startswith("check") else mutation_bound
            assert TIMEOUT_S * 0.9 <= seconds < bound, (name, seconds, bound)

        # The request reached the server's socket before it stopped: it ran on SIGCONT, once.
        applied = [await entries_for(closed, b, "silent-1") for b in budgets]
        assert applied in ([0, 0], [1, 1]), applied
        retry = await retry_until_answered(writer, "silent-1", 2.5)
        assert retry.replayed == (applied == [1, 1])
        assert [await entries_for(closed, b, "silent-1") for b in budgets] == [1, 1]
        fresh_applied = [await entries_for(closed, b, "silent-fresh") for b in budgets]
        assert fresh_applied == [0, 0], fresh_applied
        await retry_until_answered(writer, "silent-fresh", 2.5)
        assert [await entries_for(closed, b, "silent-fresh") for b in budgets] == [1, 1]
        for budget in budgets:
            await assert_invariant(closed, ORG, budget.id, budget.limit)
    print(
        f"\ntimeout (socket_timeout_s={TIMEOUT_S}, CHECK_ATTEMPTS_MAX={CHECK_ATTEMPTS_MAX}): "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timing.items())
        + f" (bounds {check_bound:.1f} s / {mutation_bound:.1f} s); the unanswered debit was "
        f"{'applied once, retry replayed' if retry.replayed else 'not applied, retry applied it'}"
        "; violations: 0"
    )
    assert retry.replayed, "a request already in the server's socket runs when it resumes"


# -- (c) mid-call -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_server_stops_mid_call(redis_server_factory: Callable[..., Any]) -> None:
    server = redis_server_factory()
    outcomes: Counter[str] = Counter()
    violations: list[str] = []
    replayed = 0
    started = time.monotonic()
    async with client(server.url, socket_timeout_s=TIMEOUT_S) as kit:
        budgets = await create_budgets(kit)
        await warm(kit)
        calls: dict[str, str] = {}  # key -> outcome

        async def worker(round_no: int, task_no: int) -> None:
            """Debits until a call fails: each task ends on the call the stop caught."""
            n = 0
            while True:
                key = f"mid-{round_no}-{task_no}-{n}"
                n += 1
                try:
                    await debit(kit, key, 0.000123)
                    calls[key] = "succeeded"
                except bk.OutcomeUnknown:
                    calls[key] = "outcome_unknown"
                    return
                except bk.BudgetUnavailable:
                    calls[key] = "unavailable"
                    return

        for round_no, cut_s in enumerate(MID_CALL_CUTS_S):
            tasks = [asyncio.create_task(worker(round_no, t)) for t in range(MID_CALL_TASKS)]
            await asyncio.sleep(cut_s)  # the load runs, then the server stops mid-call
            with stopped(server.pid):
                async with asyncio.timeout(MID_CALL_DRAIN_S):
                    await asyncio.gather(*tasks)
            await resumed(server.url)
            failed = sum(
                outcome != "succeeded"
                for key, outcome in calls.items()
                if key.startswith(f"mid-{round_no}-")
            )
            assert failed == MID_CALL_TASKS, (round_no, failed)  # one failed call per task
        outcomes.update(calls.values())

        # What was applied before any retry: at most once; never an unavailable call.
        per_key: Counter[str] = Counter()
        for budget in budgets:
            per_key.update(e.ref_id for e in await all_entries(kit, ORG, budget.id))
        for key, outcome in calls.items():
            want = {"succeeded": {2}, "outcome_unknown": {0, 2}, "unavailable": {0}}[outcome]
            if per_key[key] not in want:
                violations.append(f"{key} ({outcome}): {per_key[key]} entries before the retry")
        # Retry every unknown call with its key: each ends applied exactly once.
        for key, outcome in calls.items():
            if outcome == "outcome_unknown":
                result = await retry_until_answered(kit, key, 0.000123)
                replayed += result.replayed
                if result.replayed != (per_key[key] == 2):
                    violations.append(f"{key}: replayed={result.replayed}, {per_key[key]} before")
        per_key.clear()
        for budget in budgets:
            per_key.update(e.ref_id for e in await all_entries(kit, ORG, budget.id))
            await assert_invariant(kit, ORG, budget.id, budget.limit)
        for key, outcome in calls.items():
            want_after = 0 if outcome == "unavailable" else 2  # one entry on user and on org
            if per_key[key] != want_after:
                violations.append(f"{key} ({outcome}): {per_key[key]} entries after the retry")
    elapsed = time.monotonic() - started
    print(
        f"\nmid-call SIGSTOP, {len(MID_CALL_CUTS_S)} cuts x {MID_CALL_TASKS} tasks: "
        f"{len(calls)} debits, {outcomes['succeeded']} succeeded, "
        f"{outcomes['outcome_unknown']} outcome-unknown retried ({replayed} had been applied: "
        f"replayed; {outcomes['outcome_unknown'] - replayed} applied by the retry), "
        f"{outcomes['unavailable']} unavailable; violations: {len(violations)}; {elapsed:.1f} s"
    )
    assert not violations, violations[:10]
