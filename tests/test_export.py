"""Ledger export: exporter (consumer groups, at-least-once, trim), sinks, reconcile, restore.

Real Redis is the authority here (consumer groups, XINFO, XSETID, MINID trims); one round trip
also runs on fakeredis. The PostgreSQL sink runs on a private cluster started from the Debian
packages (or ``$BUDGETKIT_TEST_POSTGRES_URL``); without asyncpg or the server binaries those
cases skip with the reason printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import importlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio
from support import ManualClock, all_entries, micros

import budgetkit as bk
from budgetkit.export import (
    DEFAULT_GROUP,
    ExportBatch,
    Exporter,
    ExportOptions,
    ExportSink,
    JsonlSink,
    PostgresSink,
    RestoreConflict,
    discover_organizations,
    export_once,
    open_sink,
    reconcile,
    restore,
    run_exporter,
)

ORG_A = "org_books_a"
ORG_B = "org_books_b"
PG_URL_ENV = "BUDGETKIT_TEST_POSTGRES_URL"
SOAK_S = 10.0
SAMPLE_EVERY_S = 0.25


def test_export_api_names() -> None:
    import budgetkit.export as export

    for name in export.__all__:
        assert hasattr(export, name), name


def test_export_options_are_frozen_validated_and_default_as_before() -> None:
    options = ExportOptions()
    assert (options.group, options.consumer, options.batch, options.trim) == (
        DEFAULT_GROUP,
        "exporter",
        500,
        True,
    )
    assert (options.rounds_max, options.scan_count, options.claim_idle_ms) == (100, 1000, 60_000)
    assert options.snapshot_interval_s == 60.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch = 1  # type: ignore[misc]
    for bad in ({"batch": 0}, {"batch": 10_001}, {"batch": True}, {"rounds_max": 0}):
        with pytest.raises(bk.InvalidInput):
            ExportOptions(**bad)  # type: ignore[arg-type]


# -- PostgreSQL ------------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _skip(reason: str) -> None:
    print(f"\nSKIP PostgreSQL sink tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL (initdb + pg_ctl on a free loopback port, as the postgres user
    when root), or $BUDGETKIT_TEST_POSTGRES_URL; skips with the reason when impossible."""
    url = os.environ.get(PG_URL_ENV)
    if url:
        yield url
        return
    try:
        importlib.import_module("asyncpg")
    except ImportError as error:
        _skip(f"asyncpg is not importable ({error}; pip install asyncpg)")
    bindir = _pg_bin()
    if bindir is None:
        _skip("no initdb/pg_ctl (apt-get install -y postgresql, or set $" + PG_URL_ENV + ")")
    assert bindir is not None
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _skip("running as root and there is no postgres user to run the server")
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    directory = Path(tempfile.mkdtemp(prefix="bk-export-pg-"))
    if as_user:
        os.chown(directory, as_user["user"], as_user["group"])
    data, port = directory / "data", _free_port()

    def run(*argv: str) -> None:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False, **as_user
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout[-500:]} {done.stderr[-500:]}")

    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "bk", "-A", "trust", "--no-sync")
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(*pg_ctl, "-l", str(directory / "log"), "-w", "-t", "60", "-o", options, "start")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        shutil.rmtree(directory, ignore_errors=True)
        _skip(f"could not start a private PostgreSQL: {error}")
    try:
        yield f"postgresql://bk@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
            run(*pg_ctl, "-m", "fast", "-w", "stop")
        shutil.rmtree(directory, ignore_errors=True)


async def _pg_sink(url: str) -> PostgresSink:
    sink = await open_sink(url, schema=f"t_{secrets.token_hex(6)}")
    assert isinstance(sink, PostgresSink)
    return sink


@pytest_asyncio.fixture(params=["jsonl", "postgres"])
async def sink(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ExportSink]:
    """Each sink in turn: JSON Lines files in a temp dir, PostgreSQL in a fresh schema."""
    made: ExportSink
    if request.param == "jsonl":
        made = JsonlSink(tmp_path / "books")
    else:
        made = await _pg_sink(request.getfixturevalue("postgres_url"))
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def kit(real_redis: redis_asyncio.Redis, clock: ManualClock) -> bk.BudgetKit:
    return bk.BudgetKit(real_redis, clock=clock)


# -- a varied set of books -------------------------------------------------------------------


def scope_a(session: str = "sess_a1") -> bk.Scope:
    return bk.Scope(organization_id=ORG_A, session_id=session, user_id="usr_a", agent_id="agt_a")


def scope_b() -> bk.Scope:
    return bk.Scope(organization_id=ORG_B, session_id="sess_b1", user_id="usr_b")


async def populate(kit: bk.BudgetKit, clock: ManualClock) -> None:
    """Two organizations whose budgets pass through every kind of ledger entry and status:
    debits, top-ups, limit changes, period resets (calendar and duration), soft pause + resume,
    operator pause, disabled, exhausted, thresholds, metadata."""
    await kit.create_budget(ORG_A, "session", "sess_a1", "usd", 10, soft_limit=6, thresholds=[0.5])
    await kit.create_budget(ORG_A, "session", "sess_a2", "usd", 1)
    user = await kit.create_budget(
        ORG_A, "user", "usr_a", "tokens", 5000, period={"type": "calendar", "unit": "day"}
    )
    org = await kit.create_budget(
        ORG_A,
        "org",
        ORG_A,
        "usd",
        100,
        period={"type": "duration", "seconds": 3600},
        metadata={"team": "ünïcode", "tier": [1, 2]},
        warn_fraction=0.5,
    )
    agent = await kit.create_budget(ORG_A, "agent", "agt_a", "usd", 50)
    await kit.update_budget(ORG_A, agent.id, status="paused")  # operator pause
    off = await kit.create_budget(ORG_A, "app", "app_off", "credits", 3)
    await kit.disable_budget(ORG_A, off.id)
    for i in range(6):
        await kit.debit(
            scope_a(),
            {"usd": 1.25, "tokens": 400},
            meter_source="llm_tokens",
            ref_type="llm_generation",
            ref_id=f"gen_{i}",
            description=f"call {i} — résumé",
        )
        clock.advance(minutes=20)
    await kit.resume(scope_a())  # soft limit acknowledged
    await kit.top_up(ORG_A, user.id, 250, description="grant")
    await kit.update_budget(ORG_A, org.id, limit=80)  # limit_change entry
    clock.advance(days=1)  # both periods roll over at the next touch
    await kit.debit(scope_a("sess_a2"), {"usd": 2, "tokens": 10})  # sess_a2 exhausted
    await kit.create_budget(ORG_B, "session", "sess_b1", "usd", 2, soft_limit=1)
    await kit.create_budget(ORG_B, "user", "usr_b", "usd", 5)
    for _ in range(3):
        await kit.debit(scope_b(), {"usd": 0.4}, meter_source="tool_call")


async def budget_state(kit: bk.BudgetKit) -> dict[str, Any]:
    """Every budget hash (without held), the org indexes and subject sets, by key."""
    r = kit.redis
    out: dict[str, Any] = {}
    for org in await discover_organizations(r, kit.keys):
        index = kit.keys.org_index(org)
        out[index] = await r.zrange(index, 0, -1, withscores=True)
        for raw in await r.zrange(index, 0, -1):
            key = kit.keys.budget(org, raw.decode())
            fields = await r.hgetall(key)
            fields.pop(b"held", None)
            out[key] = fields
        async for key in r.scan_iter(match=f"{kit.keys.org(org)}s:*", count=500):
            out[key.decode()] = sorted(await r.smembers(key))
    return out


async def budgets_json(kit: bk.BudgetKit, orgs: list[str]) -> list[str]:
    out = []
    for org in orgs:
        out += [b.model_dump_json() for b in await kit.list_budgets(org, include_disabled=True)]
    return out


#: What one request record holds in Redis for the redelivery window (budgetkit._core.redelivery):
#: MEMORY USAGE of a 3-entry debit's receipt (scripts/measure_exactly_once.py, 328 bytes) plus
#: its expire entry. Records are transient by design (bounded by rate x window), so the soak
#: below measures the durable state without them.
REQUEST_RECORD_BYTES = 350


async def request_records(client: redis_asyncio.Redis) -> int:
    """Keys with a TTL in the database: the request records (no holds in the soak)."""
    keyspace: Any = await client.info("keyspace")
    return int(keyspace.get("db0", {}).get("expires", 0))


async def ledger_lengths(kit: bk.BudgetKit) -> int:
    total = 0
    for org in await discover_organizations(kit.redis, kit.keys):
        for raw in await kit.redis.zrange(kit.keys.org_index(org), 0, -1):
            total += await kit.redis.xlen(kit.keys.ledger(org, raw.decode()))
    return total


# -- export -> FLUSHALL -> restore -----------------------------------------------------------


@pytest.mark.real
async def test_export_flushall_restore_is_identical(
    kit: bk.BudgetKit, clock: ManualClock, sink: ExportSink
) -> None:
    await populate(kit, clock)
    before = await budget_state(kit)
    models = await budgets_json(kit, [ORG_A, ORG_B])
    checks = [(await kit.check(s)).model_dump_json() for s in (scope_a(), scope_b())]
    exporter = Exporter(kit, sink)  # one exporter across the loss: its caches must not lie
    stats = await exporter.export_once()
    assert stats.entries > 20 and stats.snapshots == 8 and stats.events > 0
    assert await ledger_lengths(kit) == 0, "exported entries are trimmed"
    assert (await reconcile(kit, sink)).ok

    await kit.redis.flushall()
    report = await restore(kit, sink)
    print("\n" + report.summary())
    assert report.ok and report.budgets == 8 and report.rolled_forward == 0
    assert report.to_json()["entries"] == stats.entries

    assert await budget_state(kit) == before  # byte-identical hashes, indexes, subject sets
    assert await budgets_json(kit, [ORG_A, ORG_B]) == models
    assert [(await kit.check(s)).model_dump_json() for s in (scope_a(), scope_b())] == checks
    assert (await reconcile(kit, sink)).ok

    # Life goes on: new entries get stream ids after the exported ones; the books stay exact.
    await kit.debit(scope_b(), {"usd": 0.1})
    stats = await exporter.export_once()
    assert stats.entries == 2 and stats.snapshots == 0  # the balance moved: not at rest yet
    assert (await exporter.export_once()).snapshots == 2  # at rest
    rep = await reconcile(kit, sink)
    assert rep.ok and rep.entries_unexported == 0, rep.summary()


@pytest.mark.real
async def test_exporter_recreates_a_lost_group(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    sink = JsonlSink(tmp_path)
    exporter = Exporter(kit, sink)
    await exporter.export_once()
    budget = (await kit.list_budgets(ORG_B, subject_type="user"))[0]
    key = kit.keys.ledger(ORG_B, budget.id)
    await kit.redis.xgroup_destroy(key, DEFAULT_GROUP)
    await kit.debit(scope_b(), {"usd": 0.1})
    assert (await exporter.export_once()).entries == 2
    assert await kit.redis.xlen(key) == 0
    assert (await reconcile(kit, sink)).ok


@pytest.mark.real
async def test_restore_refuses_a_populated_redis(
    kit: bk.BudgetKit, clock: ManualClock, sink: ExportSink
) -> None:
    await populate(kit, clock)
    await export_once(kit, sink)
    with pytest.raises(RestoreConflict):
        await restore(kit, sink)
    report = await restore(kit, sink, force=True)
    assert report.ok and (await reconcile(kit, sink)).ok


@pytest.mark.real
async def test_outstanding_holds_are_not_restored(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    hold = await kit.reserve(bk.Scope(organization_id=ORG_B, user_id="usr_b"), {"usd": 0.5})
    assert hold.granted
    budget = (await kit.list_budgets(ORG_B, subject_type="user"))[0]
    key = kit.keys.budget(ORG_B, budget.id)
    assert await kit.redis.hget(key, "held") == b"500000"
    sink = JsonlSink(tmp_path)
    await export_once(kit, sink)
    await kit.redis.flushall()
    assert (await restore(kit, sink)).ok
    assert await kit.redis.hget(key, "held") == b"0"
    assert (await kit.get_budget(ORG_B, budget.id)).balance == budget.balance
    with pytest.raises(bk.HoldNotFound):
        await kit.commit(hold, {"usd": 0.5})


@pytest.mark.real
async def test_restore_can_rebuild_the_ledger_streams(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    sink = await open_sink(f"jsonl:{tmp_path}")
    assert isinstance(sink, JsonlSink)
    await export_once(kit, sink)
    await kit.redis.flushall()
    report = await restore(kit, sink, ledger=True)
    assert report.ok and report.ledger_entries_written == report.entries > 0
    for budget in await kit.list_budgets(ORG_A, include_disabled=True):
        entries = await all_entries(kit, ORG_A, budget.id)
        initial = micros(budget.limit) + sum(
            micros(e.amount) for e in entries if e.meter_source == "limit_change"
        )
        assert micros(budget.balance) == initial - sum(micros(e.amount) for e in entries)
    # The exporter's group starts after the rebuilt entries: nothing is exported twice.
    assert (await export_once(kit, sink)).entries == 0
    assert sink.stats["ledger_duplicates"] == 0


@pytest.mark.real
async def test_restore_rolls_forward_entries_newer_than_the_snapshot(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    """Redis lost after entries were exported but before a newer snapshot was: the balance,
    limit, period start and status still come out exact."""
    await populate(kit, clock)
    sink = JsonlSink(tmp_path)
    await export_once(kit, sink)

    class LedgerOnly(JsonlSink):
        async def write(self, batch: ExportBatch) -> None:
            await super().write(ExportBatch(ledger=batch.ledger, events=batch.events))

    clock.advance(days=1)
    await kit.debit(scope_a(), {"usd": 3, "tokens": 100})  # period resets, then the debit
    org = (await kit.list_budgets(ORG_A, subject_type="org"))[0]
    await kit.update_budget(ORG_A, org.id, limit=90)
    before = await budget_state(kit)
    await export_once(kit, LedgerOnly(tmp_path))
    await kit.redis.flushall()
    report = await restore(kit, sink)
    assert report.ok and report.rolled_forward == 4, report.summary()
    after = await budget_state(kit)
    for key, fields in before.items():
        if key.startswith(kit.keys.org(ORG_A) + "b:"):
            for name in (b"bal", b"lim", b"status", b"pstart", b"ack", b"wz", b"soft"):
                assert after[key][name] == fields[name], (key, name)
    assert (await reconcile(kit, sink)).ok


async def test_export_reconcile_restore_on_fakeredis(
    fake_redis: redis_asyncio.Redis, clock: ManualClock, tmp_path: Path
) -> None:
    """The fast tier: fakeredis has consumer groups and MINID trims (not XSETID: restore
    falls back to adding and deleting one entry)."""
    kit = bk.BudgetKit(fake_redis, clock=clock)
    await populate(kit, clock)
    before = await budget_state(kit)
    sink = JsonlSink(tmp_path)
    assert (await export_once(kit, sink)).entries == 40
    assert await ledger_lengths(kit) == 0 and (await reconcile(kit, sink)).ok
    await fake_redis.flushall()
    assert (await restore(kit, sink)).ok
    assert await budget_state(kit) == before
    await kit.debit(scope_b(), {"usd": 0.1})
    assert (await export_once(kit, sink)).entries == 2
    assert (await reconcile(kit, sink)).ok


@pytest.mark.real
async def test_a_hot_budget_is_snapshotted_per_interval_at_rest_and_on_changes(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    exporter = Exporter(kit, JsonlSink(tmp_path), options=ExportOptions(snapshot_interval_s=3600))
    assert (await exporter.export_once()).snapshots == 8
    await kit.debit(scope_b(), {"usd": 0.1})  # two budgets' ledgers move
    assert (await exporter.export_once()).snapshots == 0  # moving: wait for the interval
    assert (await exporter.export_once()).snapshots == 2  # at rest now
    assert (await exporter.export_once()).snapshots == 0
    await kit.debit(scope_b(), {"usd": 0.1})
    await kit.resume(scope_b())  # status and acknowledgement: not in the ledger
    assert (await exporter.export_once()).snapshots == 1
    eager = Exporter(kit, JsonlSink(tmp_path), options=ExportOptions(snapshot_interval_s=0))
    assert (await eager.export_once()).snapshots == 8  # a new exporter writes every budget once
    await kit.debit(scope_b(), {"usd": 0.1})
    assert (await eager.export_once()).snapshots == 2  # no interval: moving budgets at once


# -- reconcile -------------------------------------------------------------------------------


@pytest.mark.real
async def test_reconcile_reports_no_drift_then_a_hand_edited_balance(
    kit: bk.BudgetKit, clock: ManualClock, sink: ExportSink
) -> None:
    await populate(kit, clock)
    await export_once(kit, sink)
    await kit.debit(scope_b(), {"usd": 0.3})  # not exported yet: still counted
    report = await reconcile(kit, sink)
    print("\n" + report.summary())
    assert report.ok and report.entries_unexported == 2 and report.budgets == 8

    victim = (await kit.list_budgets(ORG_B, subject_type="user"))[0]
    await kit.redis.hincrby(kit.keys.budget(ORG_B, victim.id), "bal", 1234)
    report = await reconcile(kit, sink)
    assert not report.ok
    assert [(d.budget_id, d.drift_micros) for d in report.drifts] == [(victim.id, 1234)]
    assert json.loads(json.dumps(report.to_json()))["drifts"][0]["drift_micros"] == 1234

    await kit.redis.delete(kit.keys.org_index(ORG_B))  # the books know budgets Redis lost
    report = await reconcile(kit, sink, [ORG_B])
    assert len(report.missing_in_redis) == 2


@pytest.mark.real
async def test_reconcile_sees_entries_lost_before_export(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    await kit.trim_history(ORG_B, ledger_max_len=1)  # entries gone, never exported
    sink = JsonlSink(tmp_path)
    await export_once(kit, sink)
    report = await reconcile(kit, sink)
    assert {d.organization_id for d in report.drifts} == {ORG_B}


# -- at-least-once, idempotent ---------------------------------------------------------------


async def _ledger_ids_in_redis(kit: bk.BudgetKit) -> list[str]:
    ids = []
    for org in await discover_organizations(kit.redis, kit.keys):
        for raw in await kit.redis.zrange(kit.keys.org_index(org), 0, -1):
            for _, fields in await kit.redis.xrange(kit.keys.ledger(org, raw.decode())):
                ids.append(fields[b"id"].decode())
    return ids


async def _ledger_ids_in_books(sink: ExportSink) -> list[str]:
    return [
        r.entry_id for org in await sink.organizations() for r in await sink.ledger_entries(org)
    ]


async def _physical_rows(sink: ExportSink) -> int | None:
    if isinstance(sink, PostgresSink):
        pool: Any = sink._pool
        return int(await pool.fetchval(f'SELECT count(*) FROM "{sink.schema}".usage_ledger'))
    return None


@pytest.mark.real
async def test_exporting_twice_stores_each_entry_once(
    kit: bk.BudgetKit, clock: ManualClock, sink: ExportSink
) -> None:
    await populate(kit, clock)
    in_redis = await _ledger_ids_in_redis(kit)
    await export_once(kit, sink, options=ExportOptions(trim=False))
    # A second exporter with another group re-reads every entry: the sink keeps one of each.
    second = ExportOptions(group="second-exporter", trim=False)
    await export_once(kit, sink, options=second)
    books = await _ledger_ids_in_books(sink)
    assert sorted(books) == sorted(in_redis) and len(set(books)) == len(books)
    assert await _physical_rows(sink) in (None, len(in_redis))
    events = await sink.events(ORG_A)
    assert len(events) == await kit.redis.xlen(kit.keys.events(ORG_A))
    assert len({e.stream_id for e in events}) == len(events)


class CrashAfterWrite:
    """A sink wrapper that dies after its first durable write (before the exporter's XACK)."""

    def __init__(self, inner: ExportSink) -> None:
        self.inner = inner
        self.writes = 0

    async def write(self, batch: ExportBatch) -> None:
        await self.inner.write(batch)
        self.writes += 1
        if batch.ledger:
            raise ConnectionError("exporter killed between the sink write and XACK")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.real
async def test_crash_between_write_and_ack_redelivers_without_duplicates(
    kit: bk.BudgetKit, clock: ManualClock, sink: ExportSink
) -> None:
    await populate(kit, clock)
    in_redis = await _ledger_ids_in_redis(kit)
    crashing = CrashAfterWrite(sink)
    small = ExportOptions(batch=3)
    with pytest.raises(ConnectionError):
        await Exporter(kit, crashing, options=small).export_once()
    session = (await kit.list_budgets(ORG_A, subject_type="session"))[-1]
    key = kit.keys.ledger(ORG_A, session.id)
    pending = await kit.redis.xpending(key, DEFAULT_GROUP)
    assert pending["pending"] == 3, "written but unacknowledged: pending, not trimmed"
    assert await kit.redis.xlen(key) == len(await all_entries(kit, ORG_A, session.id))
    written = len(await _ledger_ids_in_books(sink))
    assert written > 3

    stats = await Exporter(kit, sink, options=small).export_once()  # a new process, same consumer
    assert stats.entries == len(in_redis)  # the 3 re-delivered + the rest
    assert (await kit.redis.xpending(key, DEFAULT_GROUP))["pending"] == 0
    assert await ledger_lengths(kit) == 0
    books = await _ledger_ids_in_books(sink)
    assert sorted(books) == sorted(in_redis)
    assert await _physical_rows(sink) in (None, len(in_redis))
    if isinstance(sink, JsonlSink):
        assert sink.stats["ledger_duplicates"] == written  # appended twice, read once
    assert (await reconcile(kit, sink)).ok


@pytest.mark.real
async def test_entries_pending_for_a_dead_consumer_are_claimed(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    in_redis = await _ledger_ids_in_redis(kit)
    sink = JsonlSink(tmp_path)
    old = ExportOptions(consumer="old")
    with pytest.raises(ConnectionError):
        await Exporter(kit, CrashAfterWrite(sink), options=old).export_once()
    successor = Exporter(kit, sink, options=ExportOptions(consumer="new", claim_idle_ms=0))
    await successor.export_once()  # exports the rest, claims what "old" left pending
    assert await ledger_lengths(kit) > 0, "pending entries are never trimmed"
    await successor.export_once()  # re-reads the claimed entries as its own
    assert await ledger_lengths(kit) == 0
    assert sorted(await _ledger_ids_in_books(sink)) == sorted(in_redis)
    assert (await reconcile(kit, sink)).ok


@pytest.mark.real
async def test_trim_keeps_what_another_group_has_not_read(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    session = (await kit.list_budgets(ORG_B, subject_type="session"))[0]
    key = kit.keys.ledger(ORG_B, session.id)
    await kit.redis.xgroup_create(key, "audit", id="0")
    length = await kit.redis.xlen(key)
    await export_once(kit, JsonlSink(tmp_path))
    assert await kit.redis.xlen(key) == length  # "audit" has not read them
    await kit.redis.xreadgroup("audit", "a", {key: ">"}, count=2)
    await kit.redis.xack(key, "audit", *[sid for sid, _ in (await kit.redis.xrange(key))[:1]])
    await kit.debit(scope_b(), {"usd": 0.1})
    await export_once(kit, JsonlSink(tmp_path))
    # "audit": first entry acked, second pending -> everything from the second is kept.
    assert await kit.redis.xlen(key) == length


@pytest.mark.real
async def test_jsonl_skips_a_torn_line(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    sink = JsonlSink(tmp_path)
    await export_once(kit, sink, organizations=[ORG_B])
    with sink.path("ledger").open("ab") as out:
        out.write(b'{"kind":"ledger","id":"ledger_torn')  # a crash mid-write
    await kit.debit(scope_b(), {"usd": 0.2})
    fresh = JsonlSink(tmp_path)  # the restarted exporter
    await export_once(kit, fresh, organizations=[ORG_B])
    assert (await reconcile(kit, fresh, [ORG_B])).ok
    assert fresh.stats["skipped_lines"] == 1
    lines = sink.path("ledger").read_text().splitlines()
    assert json.loads(lines[-1])["kind"] == "ledger"


@pytest.mark.real
async def test_postgres_books_are_append_only(
    kit: bk.BudgetKit, clock: ManualClock, postgres_url: str
) -> None:
    sink = await _pg_sink(postgres_url)
    try:
        await kit.create_budget(ORG_B, "user", "usr_b", "usd", 5)
        await kit.debit(scope_b(), {"usd": 0.123456})
        await export_once(kit, sink)
        pool: Any = sink._pool
        table = f'"{sink.schema}".usage_ledger'
        row = await pool.fetchrow(f"SELECT amount, amount_micros, currency FROM {table}")
        assert str(row["amount"]) == "0.123456" and row["amount_micros"] == 123456
        for sql in (f"UPDATE {table} SET amount_micros = 0", f"DELETE FROM {table}"):
            with pytest.raises(Exception, match="append-only"):
                await pool.execute(sql)
    finally:
        await sink.aclose()


@pytest.mark.real
async def test_discovery_finds_every_organization_and_nothing_else(
    real_redis: redis_asyncio.Redis, tmp_path: Path
) -> None:
    kit = bk.BudgetKit(real_redis, prefix="b*k")  # glob characters in the prefix are literal
    other = bk.BudgetKit(real_redis, prefix="bxk")
    orgs = [f"org_{i:03d}" for i in range(30)]
    for org in orgs:
        await kit.create_budget(org, "user", "all", "usd", 1)  # a subject id named "all"
    await other.create_budget("org_other", "user", "u", "usd", 1)
    await real_redis.set("b*k:{org_fake}:all", "not a zset")
    assert await discover_organizations(real_redis, kit.keys, scan_count=7) == orgs
    stats = await export_once(kit, JsonlSink(tmp_path))
    assert stats.organizations == 30 and stats.snapshots == 30


@pytest.mark.real
async def test_run_exporter_stops_after_a_final_pass(
    kit: bk.BudgetKit, clock: ManualClock, tmp_path: Path
) -> None:
    await populate(kit, clock)
    sink = JsonlSink(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(run_exporter(kit, sink, interval_s=30, stop=stop))
    await asyncio.sleep(0.2)  # first pass done; now waiting 30 s
    await kit.debit(scope_b(), {"usd": 0.1})
    stop.set()
    stats = await asyncio.wait_for(task, 5)
    assert stats.passes == 2 and await ledger_lengths(kit) == 0
    assert (await reconcile(kit, sink)).entries_unexported == 0
    bounded = await run_exporter(kit, sink, passes_max=3, interval_s=0)
    assert bounded.passes == 3 and bounded.entries == 0
    timed = await run_exporter(kit, sink, stop_after_s=0.3, interval_s=0.05)
    assert timed.passes >= 2


# -- bounded memory under continuous load ----------------------------------------------------


@pytest.mark.real
@pytest.mark.slow
async def test_soak_memory_levels_off_with_the_exporter(
    real_redis: redis_asyncio.Redis, tmp_path: Path
) -> None:
    kit = bk.BudgetKit(real_redis)
    scopes = []
    for org in ("org_soak_1", "org_soak_2"):
        for user in ("u1", "u2"):
            await kit.create_budget(org, "user", user, "usd", 1_000_000)
            scopes.append(bk.Scope(organization_id=org, session_id=f"s_{user}", user_id=user))
        await kit.create_budget(org, "org", org, "usd", 1_000_000, thresholds=[0.5])
    sink = JsonlSink(tmp_path)
    stop_workers, stop_exporter = asyncio.Event(), asyncio.Event()
    debits = 0

    async def worker(scope: bk.Scope) -> None:
        nonlocal debits
        while not stop_workers.is_set():
            await kit.debit(scope, {"usd": 0.01}, meter_source="llm_tokens")
            debits += 1

    samples: list[tuple[float, int, int]] = []
    exporter = Exporter(kit, sink)  # hot budgets: one snapshot per minute, so none after the first
    exporting = asyncio.create_task(exporter.run(interval_s=0.2, stop=stop_exporter))
    workers = [asyncio.create_task(worker(s)) for s in scopes for _ in range(2)]
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < SOAK_S:
        info = await real_redis.info("memory")
        records = await request_records(real_redis)
        durable = int(info["used_memory"]) - records * REQUEST_RECORD_BYTES
        samples.append((elapsed, durable, await ledger_lengths(kit)))
        await asyncio.sleep(SAMPLE_EVERY_S)
    stop_workers.set()
    await asyncio.gather(*workers)
    stop_exporter.set()  # its last pass begins after the last debit
    stats = await exporting

    third = len(samples) // 3
    middle, last = samples[third : 2 * third], samples[2 * third :]
    mid_mem, last_mem = max(m for _, m, _ in middle), max(m for _, m, _ in last)
    max_len = max(n for _, _, n in samples)
    untrimmed = debits * 2 * 148  # two ledger entries per debit, ≈148 bytes each (README)
    print(
        f"\nsoak {SOAK_S:.0f}s: {debits} debits ({debits / SOAK_S:.0f}/s), "
        f"{stats.entries} entries exported in {stats.passes} passes, {stats.trimmed} trimmed, "
        f"{stats.snapshots} snapshots; used_memory first/middle-max/last-max = "
        f"{samples[0][1]}/{mid_mem}/{last_mem} bytes; ledger streams max {max_len} entries in "
        f"Redis; without trimming the ledgers would hold ≈{untrimmed} bytes"
    )
    for t, m, n in samples[:: max(1, len(samples) // 10)]:
        print(f"  t={t:5.2f}s used_memory={m} ledger_entries_in_redis={n}")
    assert debits > 1000
    assert last_mem <= mid_mem * 1.10 + 512 * 1024, "Redis memory kept growing"
    assert last_mem - samples[0][1] < untrimmed // 2 + 512 * 1024, "grew like untrimmed ledgers"
    assert max_len < debits * 2 // 4, "ledger streams were not trimmed"
    assert await ledger_lengths(kit) == 0
    report = await reconcile(kit, sink)
    assert report.ok and report.entries_exported == debits * 2, report.summary()

    # Lose Redis now. The books hold each hot budget's first snapshot (plus one taken at rest,
    # if a pass saw the budget stopped) and every entry: restore rolls the ledger forward.
    before = await budget_state(kit)
    await real_redis.flushall()
    restored = await restore(kit, sink)
    print("  " + restored.summary())
    assert restored.ok and restored.budgets == 6
    assert await budget_state(kit) == before
