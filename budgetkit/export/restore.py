"""``restore``: rebuild the budgets of the books in an empty Redis, after a total loss of Redis.

Each budget hash comes from its latest snapshot with the balance the ledger gives, rolled
forward over the entries newer than the snapshot (``books.restored_fields``); then the indexes,
and the streams positioned at the last exported ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from budgetkit._core.client import BudgetKit
from budgetkit._core.errors import BudgetkitError, CorruptState
from budgetkit.export.books import books_balance_micros, restored_fields
from budgetkit.export.records import BudgetSnapshotRecord, LedgerRecord, LedgerTotals
from budgetkit.export.sinks import ExportSink
from budgetkit.export.streams import (
    DEFAULT_GROUP,
    chunks,
    keyspace,
    position_streams,
    write_ledger,
)

__all__ = ["RestoreConflict", "RestoreReport", "restore"]

#: Budgets written per MULTI.
CHUNK_BUDGETS = 256


class RestoreConflict(BudgetkitError):
    """restore() found budget keys that already exist; it restores into an empty Redis only."""


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


def _restored(
    snap: BudgetSnapshotRecord,
    upto: LedgerTotals,
    later: Sequence[LedgerRecord],
    report: RestoreReport,
) -> dict[str, str]:
    """The hash to write for ``snap``; reports a snapshot whose balance the ledger up to it does
    not give."""
    books_bal = books_balance_micros(snap.field_int("lim"), upto)
    if books_bal != snap.field_int("bal"):
        mismatch = (snap.organization_id, snap.budget_id, snap.field_int("bal"), books_bal)
        report.balance_mismatches.append(mismatch)
    if later:
        report.rolled_forward += 1
    return restored_fields(snap, upto, later)


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
        await _restore_org(kit, sink, org, report, group=group, ledger=ledger, force=force)
    return report


async def _restore_org(
    kit: BudgetKit,
    sink: ExportSink,
    org: str,
    report: RestoreReport,
    *,
    group: str,
    ledger: bool,
    force: bool,
) -> None:
    snapshots = await sink.snapshots(org)
    until = {bid: s.ledger_last_id for bid, s in snapshots.items()}
    upto, _ = await sink.ledger_totals(org, until=until)
    everything, _ = await sink.ledger_totals(org)
    later: dict[str, list[LedgerRecord]] = {}
    for rec in await sink.ledger_entries(org, after=until):
        later.setdefault(rec.budget_id, []).append(rec)
    report.missing_snapshots += [(org, b) for b in sorted(everything) if b not in snapshots]
    hashes = {
        bid: _restored(snap, upto.get(bid) or LedgerTotals(), later.get(bid, []), report)
        for bid, snap in sorted(snapshots.items())
    }
    await _refuse_existing(kit, org, list(hashes), force)
    entries = await sink.ledger_entries(org) if ledger else []
    await _write_budgets(kit, org, hashes, force)
    await _write_streams(kit, org, hashes, everything, entries, group, force)
    report.ledger_entries_written += len(entries)
    last_event = await sink.last_event_id(org)
    if last_event is not None:
        events = [(keyspace(kit).events(org), last_event)]
        await position_streams(kit.redis, events, group, force)
    report.organizations += 1
    report.budgets += len(hashes)
    report.entries += sum(t.count for t in everything.values())


async def _refuse_existing(kit: BudgetKit, org: str, ids: Sequence[str], force: bool) -> None:
    if force or not ids:
        return
    pipe = kit.redis.pipeline(transaction=False)
    for bid in ids:
        pipe.exists(keyspace(kit).budget(org, bid))
    existing = sum(int(n) for n in await pipe.execute())
    if existing:
        raise RestoreConflict(
            f"{existing} budget(s) of {org} already exist in Redis; restore writes into an "
            "empty or flushed Redis (force=True overwrites them)"
        )


async def _write_budgets(
    kit: BudgetKit, org: str, hashes: Mapping[str, dict[str, str]], force: bool
) -> None:
    """Each budget hash with its subject set and organization index entry, a chunk per MULTI."""
    keys = keyspace(kit)
    for chunk in chunks(list(hashes), CHUNK_BUDGETS):
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


async def _write_streams(
    kit: BudgetKit,
    org: str,
    hashes: Mapping[str, dict[str, str]],
    totals: Mapping[str, LedgerTotals],
    entries: Sequence[LedgerRecord],
    group: str,
    force: bool,
) -> None:
    """The ledger streams: ``entries`` written back, every stream at its last exported id."""
    keys = keyspace(kit)
    by_budget: dict[str, list[LedgerRecord]] = {}
    for rec in entries:
        by_budget.setdefault(rec.budget_id, []).append(rec)
    positions: list[tuple[str, str]] = []
    for bid in hashes:
        rows = by_budget.get(bid, [])
        if rows:
            await write_ledger(kit.redis, keys.ledger(org, bid), rows)
        last = totals[bid].last_stream_id if bid in totals else None
        if last is not None:
            positions.append((keys.ledger(org, bid), last))
    await position_streams(kit.redis, positions, group, force)
