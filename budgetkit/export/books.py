"""The books' arithmetic: what a budget's balance must be, and the budget hash restore rebuilds.

Both rest on the ledger invariant: ``balance == initial limit - Σ ledger amounts``, where the
initial limit is the current limit plus the sum of the ``limit_change`` amounts (each is
old limit - new limit). Amounts are integer micro-units throughout.

The rules a script applies when it settles a budget (status, warning zone, thresholds, period
rollover) are stated once, in ``budgetkit._core.rules``; this module only reads and writes the
budget hash fields they act on (the field names of lua/_lib.lua).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from budgetkit._core.rules import derive_status, in_warn_zone, rollover_start_ms, thresholds_reached
from budgetkit.export.records import (
    LIMIT_CHANGE_SOURCE,
    PERIOD_RESET_SOURCE,
    BudgetSnapshotRecord,
    LedgerRecord,
    LedgerTotals,
)

__all__ = ["books_balance_micros", "restored_fields", "roll_forward"]


def books_balance_micros(limit_micros: int, *totals: LedgerTotals) -> int:
    """The balance the ledger gives a budget whose limit is now ``limit_micros``: its initial
    limit (the limit plus every limit change) minus every amount of ``totals``."""
    limit_changes = sum(t.limit_change_micros for t in totals)
    return limit_micros + limit_changes - sum(t.amount_micros for t in totals)


def _thresholds_ppm(f: Mapping[str, str]) -> list[int]:
    return [int(part) for part in (f.get("thr") or "").split(",") if part]


def _rolled_period_start(f: Mapping[str, str], at_ms: int) -> str:
    """``pstart`` after the period reset recorded at ``at_ms``."""
    started = int(f["pstart"])
    if f.get("pk") == "c":
        start = rollover_start_ms(started, at_ms, calendar_unit=f.get("pu", ""))
    elif f.get("pk") == "d":
        start = rollover_start_ms(started, at_ms, period_seconds=int(f["ps"]))
    else:
        start = None
    return f["pstart"] if start is None else str(start)


def _settle(f: dict[str, str], balance_micros: int, limit_micros: int) -> None:
    """Status and warning zone of the rolled-forward state (lua/_lib.lua ``settle``)."""
    soft = f.get("soft", "")
    f["status"] = derive_status(
        f.get("status", ""),
        balance_micros,
        limit_micros,
        soft_limit_micros=int(soft) if soft else None,
        soft_acknowledged=f.get("ack") != "0",
        operator_paused=f.get("op") == "1",
    )
    warn = in_warn_zone(balance_micros, limit_micros, int(f.get("wf") or 0))
    f["wz"] = "1" if warn else "0"


def roll_forward(f: dict[str, str], later: Sequence[LedgerRecord]) -> None:
    """Applies ledger entries newer than the snapshot (a loss under load) as the scripts did:
    balances, limit changes and period resets exactly, thresholds after each entry; then the
    status and the warning zone."""
    bal, lim = int(f["bal"]), int(f["lim"])
    updated = int(f.get("updated") or 0)
    fired = int(f.get("thrf") or 0)
    thresholds = _thresholds_ppm(f)
    for rec in later:
        bal -= rec.amount_micros
        if rec.meter_source == LIMIT_CHANGE_SOURCE:
            lim -= rec.amount_micros
            f["ack"] = "0"
        elif rec.meter_source == PERIOD_RESET_SOURCE and f.get("pstart"):
            f["pstart"] = _rolled_period_start(f, rec.created_ms)
            f["ack"], fired = "0", 0
        if f.get("status") != "disabled":
            fired = thresholds_reached(fired, lim - bal, lim, thresholds)
        updated = max(updated, rec.created_ms)
    f["bal"], f["lim"], f["updated"], f["thrf"] = str(bal), str(lim), str(updated), str(fired)
    _settle(f, bal, lim)


def restored_fields(
    snap: BudgetSnapshotRecord, upto: LedgerTotals, later: Sequence[LedgerRecord]
) -> dict[str, str]:
    """The budget hash restore writes: the snapshot with the balance the ledger gives (entries
    up to the snapshot, ``upto``), rolled forward over later entries; no holds."""
    f = dict(snap.fields)
    f["bal"] = str(books_balance_micros(snap.field_int("lim"), upto))
    f["held"] = "0"
    if later:
        roll_forward(f, later)
    return f
