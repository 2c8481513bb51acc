"""Crash recovery (SPEC §2 invariant, §4 idempotency and unavailable store) on a real server.

32 asyncio tasks on one ``BudgetKit.from_url`` debit an organization's hierarchy (org, 4 users,
8 sessions; usd and tokens budgets) with a unique idempotency key per debit (also its ``ref_id``,
so every ledger entry names the call that wrote it). Meanwhile the private redis-server is killed
with SIGKILL and restarted on the same port and directory. Every debit is recorded as
*acknowledged* (its reply was seen), *outcome unknown* (``OutcomeUnknown``: may be applied) or
*unavailable* (``BudgetUnavailable``: not applied). After the restarts the ledger streams are read
straight from Redis (XRANGE) and checked:

- ``appendonly yes`` + ``appendfsync always`` (3 kill/restart cycles): every acknowledged debit's
  ledger entries are there (same ids, same amounts); no call has more than one entry per budget;
  an unavailable call has none; a call's idempotency record exists iff its entries do (a script's
  writes reach the AOF together); ``balance == limit - Σ ledger`` exactly on every budget; the
  function library is in the AOF too, so the restarted server runs it with no reload
  (``kit._runtime.reloads`` unchanged); retrying every outcome-unknown call with its key replays or
  applies it, so afterwards every call has exactly one entry per budget it charges.
- ``appendfsync everysec``: only what is guaranteed is asserted (atomicity, no duplicates, the
  invariant on what survived, exactly once after retrying); acknowledged debits lost are counted
  and printed (a SIGKILL normally loses none: see docs/guarantees.md).
- no AOF, RDB only: a ``SAVE`` mid-load, then more load, then SIGKILL. Everything acknowledged
  before the snapshot survives, everything acknowledged after it is lost, and what survived is
  still consistent (the invariant holds, idempotency records went with their entries).

Each test prints its numbers (operations under fault, violations found: zero).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

import budgetkit as bk

pytestmark = [pytest.mark.real, pytest.mark.slow]

ORG = "org_crash"
USERS = tuple(f"usr_crash_{i}" for i in range(4))
SESSIONS = tuple(f"sess_crash_{i}" for i in range(8))
METER = "crash_test"
TASKS = 32
SOCKET_TIMEOUT_S = 2.0
LOAD_BEFORE_KILL_S = 1.0  # load runs this long before each SIGKILL ...
DOWN_S = 0.3  # ... the server stays dead this long (calls meet a refused connection) ...
LOAD_AFTER_LAST_S = 0.5  # ... and after the last restart the load goes on this long
RESUME_WAIT_S = 10.0  # after a restart the load must resume (an acknowledged debit) within this
BACKOFF_S = 0.02  # a task that met an unavailable store waits this long before its next debit
DRAIN_WAIT_S = 3 * SOCKET_TIMEOUT_S  # the tasks stop within this after being told to
TEST_DEADLINE_S = 60.0
XRANGE_PAGE = 10_000
SHOW_MAX = 10  # violations quoted in a failure message
RETRY_ATTEMPTS_MAX = 3  # a call left outcome-unknown is retried with its key up to this often

ACK, UNKNOWN, UNAVAILABLE = "acknowledged", "outcome_unknown", "unavailable"


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Call:
    """One debit: what was asked, and what the caller saw."""

    key: str
    scope: bk.Scope
    amounts: dict[str, Decimal]
    outcome: str = ""
    result: bk.DebitResult | None = None
    sent_at: float = 0.0  # time.monotonic() just before the call was made
    seen_at: float = 0.0  # time.monotonic() when the reply or the error came back


@dataclass
class Load:
    """N tasks debiting until told to stop; the calls they made, in completion order."""

    kit: bk.BudgetKit
    seed: int
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._worker(n)) for n in range(TASKS)]

    async def finish(self) -> None:
        self.stop.set()
        async with asyncio.timeout(DRAIN_WAIT_S):
            await asyncio.gather(*self.tasks)

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.calls)

    async def _worker(self, task_no: int) -> None:
        rng = random.Random(self.seed * 1000 + task_no)
        n = 0
        while not self.stop.is_set():
            call = new_call(rng, f"crash-{task_no}-{n}")
            n += 1
            call.sent_at = time.monotonic()
            try:
                call.result = await debit(self.kit, call)
                call.outcome = ACK
            except bk.OutcomeUnknown:
                call.outcome = UNKNOWN
            except bk.BudgetUnavailable:
                call.outcome = UNAVAILABLE
            call.seen_at = time.monotonic()
            self.calls.append(call)
            if call.outcome != ACK:
                await asyncio.sleep(BACKOFF_S)  # the store is down: do not spin


def new_call(rng: random.Random, key: str) -> Call:
    session = rng.randrange(len(SESSIONS))
    scope = bk.Scope(
        organization_id=ORG, session_id=SESSIONS[session], user_id=USERS[session % len(USERS)]
    )
    amounts = {
        "usd": Decimal(rng.randint(1, 2_000_000)).scaleb(-6),  # up to 2 usd, 6 decimals
        "tokens": Decimal(rng.randint(1, 4_000)),
    }
    return Call(key, scope, amounts)


async def debit(kit: bk.BudgetKit, call: Call) -> bk.DebitResult:
    """The call's debit; the same arguments every time, so a retry is the same request."""
    return await kit.debit(
        call.scope, call.amounts, meter_source=METER, ref_id=call.key, idempotency_key=call.key
    )


# -- setup and inspection -----------------------------------------------------------------------


async def create_budgets(kit: bk.BudgetKit) -> dict[str, int]:
    """The hierarchy's budgets; returns budget id -> initial limit in micros.

    Some limits are small enough to be exhausted during the run: those budgets keep being
    charged (usage is never dropped), so the books stay exact past zero."""
    specs: list[tuple[str, str, str, int]] = [
        ("org", ORG, "usd", 1_000_000),
        ("org", ORG, "tokens", 10**9),
    ]
    specs += [("user", user, "usd", 5_000) for user in USERS]
    specs += [
        ("session", sess, "usd" if i % 2 == 0 else "tokens", 300 if i % 2 == 0 else 10**6)
        for i, sess in enumerate(SESSIONS)
    ]
    limits: dict[str, int] = {}
    for subject_type, subject_id, currency, limit in specs:
        budget = await kit.create_budget(ORG, subject_type, subject_id, currency, limit)
        limits[budget.id] = limit * 10**6
    return limits


@dataclass
class Books:
    """The ledger streams of every budget, read straight from Redis."""

    entries: dict[str, dict[str, int]]  # budget id -> {ledger entry id: amount micros}
    per_call: Counter[tuple[str, str]]  # (ref_id = idempotency key, budget id) -> entries
    balances: dict[str, int]  # budget id -> balance micros (from the budget hash)

    @property
    def total(self) -> int:
        return sum(len(e) for e in self.entries.values())

    def keys_applied(self) -> set[str]:
        return {key for key, _ in self.per_call}


async def read_books(raw: Redis, kit: bk.BudgetKit, budget_ids: list[str]) -> Books:
    entries: dict[str, dict[str, int]] = {}
    per_call: Counter[tuple[str, str]] = Counter()
    balances: dict[str, int] = {}
    for bid in budget_ids:
        stream = kit.keys.ledger(ORG, bid)
        entries[bid] = {}
        start = "-"
        while True:
            page: list[Any] = await raw.xrange(stream, min=start, count=XRANGE_PAGE)
            for _stream_id, fields in page:
                assert fields["bid"] == bid, (stream, fields)
                entries[bid][fields["id"]] = int(fields["amt"])
                per_call[(fields["ri"], bid)] += 1
            if len(page) < XRANGE_PAGE:
                break
            start = "(" + page[-1][0]
        balances[bid] = round(Decimal(repr((await kit.get_budget(ORG, bid)).balance)) * 10**6)
    return Books(entries, per_call, balances)


async def idempotency_records(raw: Redis, kit: bk.BudgetKit, keys: list[str]) -> set[str]:
    """The keys whose idempotency record exists."""
    pipe = raw.pipeline(transaction=False)
    for key in keys:
        pipe.exists(kit.keys.idempotency(ORG, "debit", key))
    found = await pipe.execute()
    return {key for key, n in zip(keys, found, strict=True) if n}


@dataclass
class Report:
    """Violations of what is promised, and what was lost where loss is allowed."""

    violations: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # acknowledged calls whose entries are gone

    def check(self, ok: bool, text: Callable[[], str]) -> None:
        if not ok:
            self.violations.append(text())

    def assert_none(self) -> None:
        shown = "\n  ".join(self.violations[:SHOW_MAX])
        assert not self.violations, f"{len(self.violations)} violations:\n  {shown}"


def check_consistency(
    report: Report,
    books: Books,
    limits: dict[str, int],
    calls: list[Call],
    idem: set[str],
    *,
    acked_must_survive: bool,
) -> None:
    """What must hold on whatever survived a crash, under every persistence setting."""
    by_key = {c.key: c for c in calls}
    for bid, limit in limits.items():
        spent = sum(books.entries[bid].values())
        report.check(
            books.balances[bid] == limit - spent,
            lambda bid=bid, limit=limit, spent=spent: (
                f"invariant: {bid} balance {books.balances[bid]} != {limit} - {spent}"
            ),
        )
    for (key, bid), n in books.per_call.items():
        report.check(n == 1, lambda key=key, bid=bid, n=n: f"{key}: {n} entries on {bid}")
        report.check(key in by_key, lambda key=key: f"{key}: an entry no call wrote")
    applied = books.keys_applied()
    for call in calls:
        key = call.key
        report.check(
            (key in idem) == (key in applied),
            lambda key=key: f"{key}: idempotency record {key in idem}, entries {key in applied}",
        )
        if call.outcome == UNAVAILABLE:
            report.check(key not in applied, lambda key=key: f"{key}: unavailable but applied")
        if call.outcome != ACK:
            continue
        assert call.result is not None
        present = [books.entries[e.budget_id].get(e.id) for e in call.result.entries]
        if all(p is None for p in present) and not acked_must_survive:
            report.lost.append(key)
            continue
        for entry, amount in zip(call.result.entries, present, strict=True):
            report.check(
                amount == round(Decimal(repr(entry.amount)) * 10**6),
                lambda key=key, entry=entry, amount=amount: (
                    f"{key}: acknowledged entry {entry.id} on {entry.budget_id} "
                    f"{entry.amount} is {'missing' if amount is None else amount}"
                ),
            )
        report.check(
            sum(books.per_call[(key, bid)] for bid in limits) == len(call.result.entries),
            lambda key=key: f"{key}: ledger entries differ from the acknowledged reply",
        )


async def retry_calls(
    kit: bk.BudgetKit, calls: list[Call], stats: Counter[str]
) -> dict[str, bk.DebitResult]:
    """Retries calls with their keys (server up) until each is answered, at most
    RETRY_ATTEMPTS_MAX times: any number of retries with the key applies a call at most once.

    A retry can itself be outcome-unknown right after a restart: redis-py 8.1.0 hands out
    pooled connections the old server closed (see test_unavailable.py); counted in ``stats``."""
    results: dict[str, bk.DebitResult] = {}
    pending = list(calls)
    for _ in range(RETRY_ATTEMPTS_MAX):
        answers = await asyncio.gather(*(debit(kit, c) for c in pending), return_exceptions=True)
        again: list[Call] = []
        for call, answer in zip(pending, answers, strict=True):
            if isinstance(answer, bk.OutcomeUnknown):
                stats["retry_outcome_unknown"] += 1
                again.append(call)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                results[call.key] = answer
        pending = again
        if not pending:
            return results
    raise AssertionError(f"{len(pending)} calls still unanswered after {RETRY_ATTEMPTS_MAX} tries")


def check_exactly_once(
    report: Report, books: Books, limits: dict[str, int], results: dict[str, bk.DebitResult]
) -> None:
    """After the retries: each call has exactly one entry on every budget it charges."""
    for key, result in results.items():
        charged = {e.budget_id for e in result.entries}
        report.check(len(charged) == len(result.entries), lambda key=key: f"{key}: dup entries")
        for bid in limits:
            want = 1 if bid in charged else 0
            got = books.per_call[(key, bid)]
            report.check(
                got == want, lambda key=key, bid=bid, got=got, want=want: f"{key}: {got} on {bid}"
            )
        for entry in result.entries:
            report.check(
                entry.id in books.entries[entry.budget_id],
                lambda key=key, entry=entry: f"{key}: retry reply names missing {entry.id}",
            )


def raw_client(url: str) -> Redis:
    return Redis.from_url(url, decode_responses=True)


async def wait_resumed(load: Load, acked_at_restart: int) -> None:
    """Waits until a debit is acknowledged after the restart (the load resumed by itself)."""
    deadline = time.monotonic() + RESUME_WAIT_S
    while load.count(ACK) <= acked_at_restart:
        assert time.monotonic() < deadline, "the load did not resume after the restart"
        await asyncio.sleep(0.01)


# -- the tests ----------------------------------------------------------------------------------

CYCLES = 3


async def test_sigkill_under_load_appendfsync_always(
    redis_server_factory: Callable[..., Any], record_property: Callable[[str, object], None]
) -> None:
    started = time.monotonic()
    server = redis_server_factory(appendonly=True)  # the fixture adds --appendfsync always
    seed = random.randrange(2**32)
    stats: Counter[str] = Counter()
    kit = bk.BudgetKit.from_url(
        server.url, connection=bk.ConnectionOptions(socket_timeout_s=SOCKET_TIMEOUT_S)
    )
    try:
        async with asyncio.timeout(TEST_DEADLINE_S):
            limits = await create_budgets(kit)
            load = Load(kit, seed)
            load.start()
            cycles: list[str] = []
            for cycle in range(CYCLES):
                await asyncio.sleep(LOAD_BEFORE_KILL_S)
                before = Counter(c.outcome for c in load.calls)
                await asyncio.to_thread(server.kill)  # SIGKILL: no shutdown, no final fsync
                await asyncio.sleep(DOWN_S)
                reloads = kit._runtime.reloads
                acked = load.count(ACK)
                await asyncio.to_thread(server.restart)
                await wait_resumed(load, acked)
                # The function library is persisted in the AOF with the data: nothing to load.
                assert kit._runtime.reloads == reloads, f"cycle {cycle}: the library was lost"
                during = Counter(c.outcome for c in load.calls) - before
                cycles.append(
                    f"cycle {cycle + 1}: {during[UNKNOWN]} outcome-unknown, "
                    f"{during[UNAVAILABLE]} unavailable, "
                    f"{kit._runtime.reloads - reloads} script reloads"
                )
            await asyncio.sleep(LOAD_AFTER_LAST_S)
            await load.finish()

            raw = raw_client(server.url)
            try:
                calls = load.calls
                keys = [c.key for c in calls]
                report = Report()
                books = await read_books(raw, kit, list(limits))
                idem = await idempotency_records(raw, kit, keys)
                check_consistency(report, books, limits, calls, idem, acked_must_survive=True)
                entries_before_retry = books.total

                unknown = [c for c in calls if c.outcome == UNKNOWN]
                retried = await retry_calls(kit, unknown, stats)
                replayed = sum(r.replayed for r in retried.values())
                books = await read_books(raw, kit, list(limits))
                acked = {c.key: c.result for c in calls if c.outcome == ACK and c.result}
                check_exactly_once(report, books, limits, {**acked, **retried})
                idem = await idempotency_records(raw, kit, keys)
                check_consistency(report, books, limits, calls, idem, acked_must_survive=True)
                # A new call after all the restarts works on the same client.
                assert (await kit.check(calls[0].scope)).error_code != "budget_unavailable"
            finally:
                await raw.aclose()
    finally:
        await kit.aclose()

    elapsed = time.monotonic() - started
    n_ack, n_unavailable = load.count(ACK), load.count(UNAVAILABLE)
    counters = kit.counters
    print(
        f"\ncrash test: {n_ack} debits acknowledged, {len(unknown)} outcome-unknown retried, "
        f"{n_unavailable} unavailable; violations: {len(report.violations)}"
    )
    print(
        f"  appendfsync always, {CYCLES} SIGKILL/restart cycles under {TASKS} tasks, seed {seed}, "
        f"{elapsed:.1f} s; {len(calls)} debits tried; {entries_before_retry} ledger entries "
        f"before the retries, {books.total} after; retries: {replayed} replayed (applied "
        f"before the crash), {len(unknown) - replayed} applied now; "
        f"{stats['retry_outcome_unknown']} retries outcome-unknown again (retried again); "
        f"{kit._runtime.reloads} script reloads; counters {counters}"
    )
    print("  " + "\n  ".join(cycles))
    record_property("debits_acknowledged", n_ack)
    record_property("outcome_unknown_retried", len(unknown))
    record_property("unavailable", n_unavailable)
    record_property("violations", len(report.violations))
    report.assert_none()
    assert unknown, "no call was in flight at a SIGKILL: the test did not exercise OutcomeUnknown"
    assert counters.outcome_unknown == len(unknown) + stats["retry_outcome_unknown"]
    assert counters.unavailable == n_unavailable
    assert elapsed < TEST_DEADLINE_S


async def test_sigkill_under_load_appendfsync_everysec(
    redis_server_factory: Callable[..., Any], record_property: Callable[[str, object], None]
) -> None:
    """everysec: a SIGKILL may lose acknowledged debits only if Redis had postponed its write(2)
    (a slow background fsync); asserted here is what holds regardless."""
    started = time.monotonic()
    server = redis_server_factory(appendonly=True, extra_args=["--appendfsync", "everysec"])
    seed = random.randrange(2**32)
    stats: Counter[str] = Counter()
    kit = bk.BudgetKit.from_url(
        server.url, connection=bk.ConnectionOptions(socket_timeout_s=SOCKET_TIMEOUT_S)
    )
    try:
        async with asyncio.timeout(TEST_DEADLINE_S):
            limits = await create_budgets(kit)
            load = Load(kit, seed)
            load.start()
            await asyncio.sleep(LOAD_BEFORE_KILL_S)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(DOWN_S)
            await asyncio.to_thread(server.restart)
            await load.finish()
            report, unknown, lost, total = await verify_after_loss(
                server.url, kit, limits, load, stats
            )
    finally:
        await kit.aclose()
    elapsed = time.monotonic() - started
    print(
        f"\ncrash test (appendfsync everysec): {load.count(ACK)} debits acknowledged, "
        f"{len(unknown)} outcome-unknown retried, {load.count(UNAVAILABLE)} unavailable; "
        f"acknowledged but lost: {len(lost)}; violations: {len(report.violations)}"
    )
    print(f"  1 SIGKILL under {TASKS} tasks, seed {seed}, {elapsed:.1f} s, {total} ledger entries")
    record_property("everysec_acknowledged_lost", len(lost))
    record_property("violations", len(report.violations))
    report.assert_none()


async def test_sigkill_without_aof_keeps_last_snapshot(
    redis_server_factory: Callable[..., Any], record_property: Callable[[str, object], None]
) -> None:
    """No AOF: a restart brings back the last RDB snapshot, consistent but old."""
    started = time.monotonic()
    server = redis_server_factory()  # appendonly no, no automatic snapshots (--save '')
    seed = random.randrange(2**32)
    stats: Counter[str] = Counter()
    kit = bk.BudgetKit.from_url(
        server.url, connection=bk.ConnectionOptions(socket_timeout_s=SOCKET_TIMEOUT_S)
    )
    try:
        async with asyncio.timeout(TEST_DEADLINE_S):
            limits = await create_budgets(kit)
            load = Load(kit, seed)
            load.start()
            await asyncio.sleep(LOAD_BEFORE_KILL_S / 2)
            raw = raw_client(server.url)
            try:
                save_sent = time.monotonic()
                await raw.save()  # a point-in-time snapshot, taken between two scripts
                save_done = time.monotonic()
            finally:
                await raw.aclose()
            await asyncio.sleep(LOAD_BEFORE_KILL_S / 2)
            kill_at = time.monotonic()
            await asyncio.to_thread(server.kill)
            await asyncio.to_thread(server.restart)
            await load.finish()
            report, unknown, lost, total = await verify_after_loss(
                server.url, kit, limits, load, stats
            )
    finally:
        await kit.aclose()
    acked = [c for c in load.calls if c.outcome == ACK]
    # Causal order only (replies on different connections may be read in any order): a reply
    # seen before SAVE was sent is in the snapshot; a call sent after SAVE returned is not.
    before_save = {c.key for c in acked if c.seen_at < save_sent}
    after_save = {c.key for c in acked if save_done < c.sent_at and c.seen_at < kill_at}
    lost_keys = set(lost)
    report.check(
        not before_save & lost_keys,
        lambda: f"{len(before_save & lost_keys)} debits acknowledged before SAVE were lost",
    )
    report.check(
        after_save <= lost_keys,
        lambda: f"{len(after_save - lost_keys)} debits acknowledged after SAVE survived a kill",
    )
    elapsed = time.monotonic() - started
    print(
        f"\ncrash test (no AOF, one SAVE): {len(acked)} debits acknowledged, "
        f"{len(before_save)} before the snapshot (all kept), {len(lost)} lost by the SIGKILL "
        f"(all {len(after_save)} sent after it, plus {len(lost) - len(after_save)} "
        f"acknowledged around it); {len(unknown)} "
        f"outcome-unknown and the lost ones retried with their keys: each applied exactly once; "
        f"violations: {len(report.violations)}"
    )
    print(f"  seed {seed}, {elapsed:.1f} s, {total} ledger entries after the retries")
    record_property("no_aof_acknowledged_lost", len(lost))
    record_property("violations", len(report.violations))
    report.assert_none()
    assert after_save, "no debit was acknowledged after the snapshot: nothing was at risk"


async def verify_after_loss(
    url: str, kit: bk.BudgetKit, limits: dict[str, int], load: Load, stats: Counter[str]
) -> tuple[Report, list[Call], list[str], int]:
    """Consistency of what survived; then the unknown and the lost calls are retried with their
    keys and each must end applied exactly once. Returns (report, unknown, lost keys, entries)."""
    calls = load.calls
    keys = [c.key for c in calls]
    report = Report()
    raw = raw_client(url)
    try:
        books = await read_books(raw, kit, list(limits))
        idem = await idempotency_records(raw, kit, keys)
        check_consistency(report, books, limits, calls, idem, acked_must_survive=False)
        unknown = [c for c in calls if c.outcome == UNKNOWN]
        lost = set(report.lost)
        # A lost debit's idempotency record went with it: the retry applies it (once).
        retried = await retry_calls(kit, [*unknown, *(c for c in calls if c.key in lost)], stats)
        for key in lost:
            report.check(not retried[key].replayed, lambda key=key: f"{key}: lost yet replayed")
        books = await read_books(raw, kit, list(limits))
        acked = {c.key: c.result for c in calls if c.outcome == ACK and c.result}
        kept = {k: r for k, r in acked.items() if k not in lost}
        check_exactly_once(report, books, limits, {**kept, **retried})
        per_key: defaultdict[str, int] = defaultdict(int)
        for (key, _), n in books.per_call.items():
            per_key[key] += n
        for call in calls:
            if call.outcome == UNAVAILABLE:
                report.check(
                    per_key[call.key] == 0, lambda c=call: f"{c.key}: unavailable, applied"
                )
        return report, unknown, report.lost, books.total
    finally:
        await raw.aclose()
