"""``reconcile``: compare every Redis balance with what the exported books say it must be.

Expected balance = initial limit - Σ amounts over the exported entries plus those still only in
Redis (not exported yet): ``books.books_balance_micros``. Read-only on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from budgetkit._core.client import BudgetKit
from budgetkit._core.replies import text_of
from budgetkit.export.books import books_balance_micros
from budgetkit.export.records import ZERO_STREAM_ID, LedgerRecord, LedgerTotals
from budgetkit.export.sinks import ExportSink
from budgetkit.export.streams import (
    budget_ids,
    chunks,
    discover_organizations,
    keyspace,
    last_stream_id,
    stream_upto,
)

__all__ = ["BudgetDrift", "ReconcileReport", "reconcile"]

#: Budgets read per MULTI.
CHUNK_BUDGETS = 256


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
    keys = keyspace(kit)
    if organizations is None:
        found = await discover_organizations(kit.redis, keys)
        organizations = sorted(set(found) | set(await sink.organizations()))
    for org in organizations:
        ids = await budget_ids(kit.redis, keys, org)
        known = set(ids)
        snapshots = await sink.snapshots(org)
        report.missing_in_redis += [(org, b) for b in sorted(snapshots) if b not in known]
        for chunk in chunks(ids, CHUNK_BUDGETS):
            await _reconcile_chunk(kit, sink, org, chunk, report)
        report.organizations += 1
        report.budgets += len(ids)
    return report


#: A budget as reconcile reads it from Redis: limit, balance (micros), currency, ledger last id.
_RedisState = tuple[int, int, str, str]


async def _redis_states(kit: BudgetKit, org: str, chunk: Sequence[str]) -> dict[str, _RedisState]:
    """The chunk's budgets (those whose hash exists), read in one MULTI."""
    keys = keyspace(kit)
    pipe = kit.redis.pipeline(transaction=True)
    for bid in chunk:
        pipe.hmget(keys.budget(org, bid), ["lim", "bal", "cur"])
        pipe.xinfo_stream(keys.ledger(org, bid))
    replies = await pipe.execute(raise_on_error=False)
    state: dict[str, _RedisState] = {}
    for i, bid in enumerate(chunk):
        values, info = replies[2 * i], replies[2 * i + 1]
        if isinstance(values, Exception) or values[0] is None:
            continue  # indexed, hash gone
        last = last_stream_id(info) or ZERO_STREAM_ID
        state[bid] = (int(values[0]), int(values[1]), text_of(values[2]), last)
    return state


async def _reconcile_chunk(
    kit: BudgetKit, sink: ExportSink, org: str, chunk: Sequence[str], report: ReconcileReport
) -> None:
    state = await _redis_states(kit, org, chunk)
    tails: dict[str, list[LedgerRecord]] = {}
    for bid, (_, _, cur, last) in state.items():
        if last != ZERO_STREAM_ID:
            raw = await stream_upto(kit.redis, keyspace(kit).ledger(org, bid), last)
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
        expected = books_balance_micros(lim, books, extra)
        report.entries_exported += books.count
        report.entries_unexported += extra.count
        if expected != bal:
            drift = BudgetDrift(org, bid, cur, bal, expected, books.count, extra.count)
            report.drifts.append(drift)
