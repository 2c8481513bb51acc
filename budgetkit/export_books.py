"""Reading the exported books back: ``reconcile`` (Redis vs books) and ``restore`` (books →
Redis after a total loss of Redis).

Both rest on the ledger invariant: ``balance == initial limit - Σ ledger amounts``, where the
initial limit is the current limit plus the sum of the ``limit_change`` amounts (each is
old limit - new limit). Amounts are integer micro-units throughout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from budgetkit.client import BudgetKit
from budgetkit.errors import CorruptState
from budgetkit.evaluate import PPM
from budgetkit.export_base import (
    DEFAULT_GROUP,
    LIMIT_CHANGE_SOURCE,
    ZERO_STREAM_ID,
    BudgetSnapshotRecord,
    ExportSink,
    LedgerRecord,
    LedgerTotals,
    RestoreConflict,
    budget_ids,
    discover_organizations,
)
from budgetkit.periods import aligned_period_start_ms, bucket_start_ms
from budgetkit.replies import text_of

__all__ = ["BudgetDrift", "ReconcileReport", "RestoreReport", "reconcile", "restore"]

#: Budgets read per MULTI (reconcile) / written per MULTI (restore).
CHUNK_BUDGETS = 256
#: Stream entries per XRANGE page.
TAIL_PAGE = 1000
PERIOD_RESET_SOURCE = "period_reset"


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- reconcile ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetDrift:
    """One budget whose Redis balance differs from what the books say (micros)."""

    organization_id: str
    budget_id: str
    currency: str
    balance_micros: int
    expected_micros: int
    exported_entries: int
    unexported_entries: int

    @property
    def drift_micros(self) -> int:
        """Redis balance - books balance: > 0 Redis has more than the books allow."""
        return self.balance_micros - self.expected_micros


@dataclass(slots=True)
class ReconcileReport:
    """``ok`` iff no drift and every budget of the books is in Redis."""

    organizations: int = 0
    budgets: int = 0
    entries_exported: int = 0
    entries_unexported: int = 0
    drifts: list[BudgetDrift] = field(default_factory=list)
    missing_in_redis: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drifts and not self.missing_in_redis

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (drifts with their drift_micros)."""
        return {
            "ok": self.ok,
            "organizations": self.organizations,
            "budgets": self.budgets,
            "entries_exported": self.entries_exported,
            "entries_unexported": self.entries_unexported,
            "drifts": [asdict(d) | {"drift_micros": d.drift_micros} for d in self.drifts],
            "missing_in_redis": [list(pair) for pair in self.missing_in_redis],
        }

    def summary(self) -> str:
        return (
            f"{self.budgets} budgets in {self.organizations} organizations; "
            f"{self.entries_exported} ledger entries in the books, "
            f"{self.entries_unexported} not exported yet; {len(self.drifts)} drifting, "
            f"{len(self.missing_in_redis)} missing in Redis"
        )


async def _stream_upto(redis: Redis, key: str, last: str) -> list[tuple[str, dict[str, str]]]:
    """Entries of a stream with id ≤ last, oldest first (paged XRANGE)."""
    out: list[tuple[str, dict[str, str]]] = []
    start = "-"
    while True:
        page: Any = await redis.xrange(key, start, last, count=TAIL_PAGE)
        for sid, values in page:
            out.append((text_of(sid), {text_of(k): text_of(v) for k, v in values.items()}))
        if len(page) < TAIL_PAGE:
            return out
        start = "(" + out[-1][0]


async def reconcile(
    kit: BudgetKit, sink: ExportSink, organizations: Sequence[str] | None = None
) -> ReconcileReport:
    """Compares every Redis balance with the books: expected = initial limit - Σ amounts over
    the exported entries plus those still only in Redis (not exported yet).

    Safe while debits and the exporter run: each budget's balance is read in one MULTI with its
    ledger's last id L; the entries ≤ L still in Redis are read next and the books last, so an
    entry trimmed meanwhile is already in the books; entries in both count once (by id).
    """
    report = ReconcileReport()
    if organizations is None:
        found = await discover_organizations(kit.redis, kit.keys)
        organizations = sorted(set(found) | set(await sink.organizations()))
    for org in organizations:
        ids = await budget_ids(kit.redis, kit.keys, org)
        known = set(ids)
        snapshots = await sink.snapshots(org)
        report.missing_in_redis += [(org, b) for b in sorted(snapshots) if b not in known]
        for chunk in _chunks(ids, CHUNK_BUDGETS):
            await _reconcile_chunk(kit, sink, org, chunk, report)
        report.organizations += 1
        report.budgets += len(ids)
    return report


async def _reconcile_chunk(
    kit: BudgetKit, sink: ExportSink, org: str, chunk: Sequence[str], report: ReconcileReport
) -> None:
    keys = kit.keys
    pipe = kit.redis.pipeline(transaction=True)
    for bid in chunk:
        pipe.hmget(keys.budget(org, bid), ["lim", "bal", "cur"])
        pipe.xinfo_stream(keys.ledger(org, bid))
    replies = await pipe.execute(raise_on_error=False)
    state: dict[str, tuple[int, int, str, str]] = {}
    for i, bid in enumerate(chunk):
        values, info = replies[2 * i], replies[2 * i + 1]
        if isinstance(values, Exception) or values[0] is None:
            continue  # indexed, hash gone
        last = text_of(info["last-generated-id"]) if isinstance(info, dict) else ZERO_STREAM_ID
        if isinstance(info, Exception) and not str(info).startswith("no such key"):
            raise info
        state[bid] = (int(values[0]), int(values[1]), text_of(values[2]), last)
    tails: dict[str, list[LedgerRecord]] = {}
    for bid, (_, _, cur, last) in state.items():
        if last != ZERO_STREAM_ID:
            raw = await _stream_upto(kit.redis, keys.ledger(org, bid), last)
            tails[bid] = [LedgerRecord.from_stream(org, cur, sid, v) for sid, v in raw]
    probe = [r.entry_id for rows in tails.values() for r in rows]
    until = {bid: s[3] for bid, s in state.items()}
    totals, present = await sink.ledger_totals(org, until=until, probe_ids=probe)
    for bid, (lim, bal, cur, _) in state.items():
        books = totals.get(bid) or LedgerTotals()
        extra = LedgerTotals()
        for rec in tails.get(bid, []):
            if rec.entry_id not in present:
                extra.add(rec)
        initial = lim + books.limit_change_micros + extra.limit_change_micros
        expected = initial - books.amount_micros - extra.amount_micros
        report.entries_exported += books.count
        report.entries_unexported += extra.count
        if expected != bal:
            drift = BudgetDrift(org, bid, cur, bal, expected, books.count, extra.count)
            report.drifts.append(drift)


# -- restore --------------------------------------------------------------------------------


@dataclass(slots=True)
class RestoreReport:
    """What restore wrote, and what the books could not account for."""

    organizations: int = 0
    budgets: int = 0
    entries: int = 0
    rolled_forward: int = 0
    ledger_entries_written: int = 0
    balance_mismatches: list[tuple[str, str, int, int]] = field(default_factory=list)
    missing_snapshots: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.balance_mismatches and not self.missing_snapshots

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}

    def summary(self) -> str:
        return (
            f"restored {self.budgets} budgets of {self.organizations} organizations from "
            f"{self.entries} ledger entries ({self.rolled_forward} rolled forward past their "
            f"snapshot); {len(self.balance_mismatches)} snapshot/ledger mismatches, "
            f"{len(self.missing_snapshots)} budgets without a snapshot (not restored)"
        )


def _derive_status(f: Mapping[str, str], bal: int, lim: int) -> str:
    """The status rule of lua/_lib.lua derive_status."""
    if f.get("status") == "disabled":
        return "disabled"
    if bal <= 0:
        return "exhausted"
    if f.get("op") == "1":
        return "paused"
    soft = f.get("soft", "")
    if soft and f.get("ack") == "0" and lim - bal >= int(soft):
        return "paused"
    return "active"


def _thresholds_fired(f: Mapping[str, str], bits: int, bal: int, lim: int) -> int:
    """``bits`` with every threshold the spend has reached set (fire_thresholds in _lib.lua)."""
    spent = lim - bal
    for i, part in enumerate(p for p in (f.get("thr") or "").split(",") if p):
        if spent >= -(-int(part) * lim // PPM):
            bits |= 1 << i
    return bits


def _roll_forward(f: dict[str, str], later: Sequence[LedgerRecord]) -> None:
    """Applies ledger entries newer than the snapshot (a loss under load) as the scripts did:
    balances, limit changes and period resets exactly, thresholds after each entry; then the
    status and warning zone by the rules of _lib.lua settle."""
    bal, lim = int(f["bal"]), int(f["lim"])
    updated = int(f.get("updated") or 0)
    thrf = int(f.get("thrf") or 0)
    for rec in later:
        bal -= rec.amount_micros
        if rec.meter_source == LIMIT_CHANGE_SOURCE:
            lim -= rec.amount_micros
            f["ack"] = "0"
        elif rec.meter_source == PERIOD_RESET_SOURCE and f.get("pstart"):
            pstart = int(f["pstart"])
            if f.get("pk") == "c":
                f["pstart"] = str(bucket_start_ms(rec.created_ms, f.get("pu", "")))
            elif f.get("pk") == "d":
                seconds = int(f["ps"])
                f["pstart"] = str(aligned_period_start_ms(pstart, rec.created_ms, seconds))
            f["ack"], thrf = "0", 0
        if f.get("status") != "disabled":
            thrf = _thresholds_fired(f, thrf, bal, lim)
        updated = max(updated, rec.created_ms)
    f["bal"], f["lim"], f["updated"], f["thrf"] = str(bal), str(lim), str(updated), str(thrf)
    f["status"] = _derive_status(f, bal, lim)
    f["wz"] = "1" if bal <= int(f.get("wf") or 0) * lim // PPM else "0"


def _restored_fields(
    snap: BudgetSnapshotRecord,
    upto: LedgerTotals,
    later: Sequence[LedgerRecord],
    report: RestoreReport,
) -> dict[str, str]:
    """The budget hash to write: the snapshot with the balance the ledger gives (initial limit
    - Σ entries up to the snapshot), rolled forward over later entries; no holds."""
    f = dict(snap.fields)
    lim = snap.field_int("lim")
    books_bal = lim + upto.limit_change_micros - upto.amount_micros
    if books_bal != snap.field_int("bal"):
        mismatch = (snap.organization_id, snap.budget_id, snap.field_int("bal"), books_bal)
        report.balance_mismatches.append(mismatch)
    f["bal"] = str(books_bal)
    f["held"] = "0"
    if later:
        _roll_forward(f, later)
        report.rolled_forward += 1
    return f


async def restore(
    kit: BudgetKit,
    sink: ExportSink,
    organizations: Sequence[str] | None = None,
    *,
    group: str = DEFAULT_GROUP,
    ledger: bool = False,
    force: bool = False,
) -> RestoreReport:
    """Rebuilds the budgets of the books in Redis: each budget hash (from its latest snapshot,
    with balance = initial limit - Σ its exported ledger, rolled forward over entries newer
    than the snapshot), the subject index sets and the organization index.

    An admin operation for an empty or flushed Redis: RestoreConflict if a budget key exists
    (``force``: overwrite those hashes). Not restored: outstanding holds (held = 0),
    idempotency records, events. The ledger and event streams are recreated empty at the last
    exported id (so new ids follow the old ones, and the exporter's ``group`` starts there);
    ``ledger=True`` also writes the exported entries back into the ledger streams.
    """
    report = RestoreReport()
    orgs = list(organizations) if organizations is not None else await sink.organizations()
    for org in orgs:
        snapshots = await sink.snapshots(org)
        until = {bid: s.ledger_last_id for bid, s in snapshots.items()}
        upto, _ = await sink.ledger_totals(org, until=until)
        everything, _ = await sink.ledger_totals(org)
        later: dict[str, list[LedgerRecord]] = {}
        for rec in await sink.ledger_entries(org, after=until):
            later.setdefault(rec.budget_id, []).append(rec)
        report.missing_snapshots += [(org, b) for b in sorted(everything) if b not in snapshots]
        hashes = {
            bid: _restored_fields(snap, upto.get(bid) or LedgerTotals(), later.get(bid, []), report)
            for bid, snap in sorted(snapshots.items())
        }
        await _refuse_existing(kit, org, list(hashes), force)
        entries = await sink.ledger_entries(org) if ledger else []
        await _write_org(kit, org, hashes, everything, entries, group, force)
        report.ledger_entries_written += len(entries)
        last_event = await sink.last_event_id(org)
        if last_event is not None:
            await _position_streams(kit.redis, [(kit.keys.events(org), last_event)], group, force)
        report.organizations += 1
        report.budgets += len(hashes)
        report.entries += sum(t.count for t in everything.values())
    return report


async def _refuse_existing(kit: BudgetKit, org: str, ids: Sequence[str], force: bool) -> None:
    if force or not ids:
        return
    pipe = kit.redis.pipeline(transaction=False)
    for bid in ids:
        pipe.exists(kit.keys.budget(org, bid))
    existing = sum(int(n) for n in await pipe.execute())
    if existing:
        raise RestoreConflict(
            f"{existing} budget(s) of {org} already exist in Redis; restore writes into an "
            "empty or flushed Redis (force=True overwrites them)"
        )


async def _write_org(
    kit: BudgetKit,
    org: str,
    hashes: Mapping[str, dict[str, str]],
    totals: Mapping[str, LedgerTotals],
    entries: Sequence[LedgerRecord],
    group: str,
    force: bool,
) -> None:
    keys = kit.keys
    for chunk in _chunks(list(hashes), CHUNK_BUDGETS):
        pipe = kit.redis.pipeline(transaction=True)
        for bid in chunk:
            f = hashes[bid]
            key = keys.budget(org, bid)
            if force:
                pipe.delete(key)
            mapping: dict[Any, Any] = dict(f)
            pipe.hset(key, mapping=mapping)
            pipe.sadd(keys.subject(org, f["st"], f["sid"]), bid)
            try:
                pipe.zadd(keys.org_index(org), {bid: int(f["created"])})
            except (KeyError, ValueError):
                raise CorruptState(f"snapshot of {bid}: field created") from None
        await pipe.execute()
    by_budget: dict[str, list[LedgerRecord]] = {}
    for rec in entries:
        by_budget.setdefault(rec.budget_id, []).append(rec)
    positions: list[tuple[str, str]] = []
    for bid in hashes:
        rows = by_budget.get(bid, [])
        if rows:
            await _write_ledger(kit.redis, keys.ledger(org, bid), rows)
        last = totals[bid].last_stream_id if bid in totals else None
        if last is not None:
            positions.append((keys.ledger(org, bid), last))
    await _position_streams(kit.redis, positions, group, force)


async def _write_ledger(redis: Redis, key: str, rows: Sequence[LedgerRecord]) -> None:
    for start in range(0, len(rows), TAIL_PAGE):
        pipe = redis.pipeline(transaction=False)
        for rec in rows[start : start + TAIL_PAGE]:
            values = {
                "id": rec.entry_id,
                "bid": rec.budget_id,
                "amt": str(rec.amount_micros),
                "src": rec.meter_source,
                "rt": rec.ref_type or "",
                "ri": rec.ref_id or "",
                "sess": rec.session_id or "",
                "desc": rec.description or "",
                "ts": str(rec.created_ms),
            }
            pipe.xadd(key, values, id=rec.stream_id)  # type: ignore[arg-type]
        await pipe.execute()


async def _position_streams(
    redis: Redis, positions: Sequence[tuple[str, str]], group: str, force: bool
) -> None:
    """Each stream exists with last id ``last`` (new entries get greater ids) and the
    exporter's group starts there: its entries are in the books already."""
    for start in range(0, len(positions), CHUNK_BUDGETS):
        chunk = positions[start : start + CHUNK_BUDGETS]
        pipe = redis.pipeline(transaction=False)
        for key, last in chunk:
            pipe.xgroup_create(key, group, id=last, mkstream=True)
            pipe.execute_command("XSETID", key, last)
        replies = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if not isinstance(reply, ResponseError) or str(reply).startswith("BUSYGROUP"):
                continue
            if "unknown command" in str(reply):  # no XSETID (fakeredis): add and delete one
                key, last = chunk[i // 2]
                await redis.xadd(key, {"restored": "1"}, id=last)
                await redis.xdel(key, last)
            elif not force:
                raise reply
