"""The records of the exported books, and the stream ids that order them.

Three kinds of records leave Redis (amounts integer micro-units, times integer ms, ``taken_us``
µs, exactly as Redis stores them):

- ``LedgerRecord``: one ledger stream entry; idempotent on its ledger id (``ledger_…``).
- ``EventRow``: one entry of an organization's event stream; idempotent on (org, stream id).
- ``BudgetSnapshotRecord``: the whole budget hash, read atomically with the last id of the
  budget's ledger stream (``ledger_last_id``): the snapshot covers exactly the ledger entries
  with stream id ≤ that id. Idempotent on ``snapshot_id`` (a digest of org, budget, last id and
  fields), so exporting an unchanged budget twice stores it once.

``ExportBatch`` is what one sink write stores; ``LedgerTotals`` what the books sum per budget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from budgetkit._core.errors import CorruptState
from budgetkit._core.replies import EventRecord, ms_to_datetime

__all__ = [
    "LIMIT_CHANGE_SOURCE",
    "PERIOD_RESET_SOURCE",
    "ZERO_STREAM_ID",
    "BudgetSnapshotRecord",
    "EventRow",
    "ExportBatch",
    "LedgerRecord",
    "LedgerTotals",
    "StreamId",
    "format_stream_id",
    "next_stream_id",
    "parse_stream_id",
]

#: A Redis stream id as (ms, sequence): compares like the stream orders its entries.
StreamId = tuple[int, int]

ZERO_STREAM_ID = "0-0"

#: Source of the ledger entries that move the limit (amount = old limit - new limit).
LIMIT_CHANGE_SOURCE = "limit_change"
#: Source of the ledger entries a period rollover writes (amount = balance - limit).
PERIOD_RESET_SOURCE = "period_reset"


def parse_stream_id(text: str) -> StreamId:
    """``"1700000000000-3"`` as (1700000000000, 3); CorruptState when malformed."""
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise CorruptState(f"malformed stream id {text!r}")
    return int(ms), int(seq)


def format_stream_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def next_stream_id(text: str) -> str:
    """The smallest stream id greater than ``text`` (XTRIM MINID of it drops ``text``)."""
    ms, seq = parse_stream_id(text)
    return format_stream_id((ms, seq + 1))


def _opt(value: str) -> str | None:
    return value if value != "" else None


def _utc(ms: int) -> str:
    return ms_to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One ledger entry as exported: the stream entry plus its organization, currency and
    stream id. ``amount_micros``: + debit, - credit (ledger sign convention)."""

    organization_id: str
    budget_id: str
    currency: str
    entry_id: str
    amount_micros: int
    meter_source: str
    ref_type: str | None
    ref_id: str | None
    session_id: str | None
    description: str | None
    created_ms: int
    stream_id: str

    @property
    def sid(self) -> StreamId:
        return parse_stream_id(self.stream_id)

    @classmethod
    def from_stream(
        cls, organization_id: str, currency: str, stream_id: str, fields: Mapping[str, str]
    ) -> LedgerRecord:
        """From a ledger stream entry's fields (id bid amt src rt ri sess desc ts)."""
        try:
            return cls(
                organization_id=organization_id,
                budget_id=fields["bid"],
                currency=currency,
                entry_id=fields["id"],
                amount_micros=int(fields["amt"]),
                meter_source=fields["src"],
                ref_type=_opt(fields.get("rt", "")),
                ref_id=_opt(fields.get("ri", "")),
                session_id=_opt(fields.get("sess", "")),
                description=_opt(fields.get("desc", "")),
                created_ms=int(fields["ts"]),
                stream_id=stream_id,
            )
        except (KeyError, ValueError) as error:
            raise CorruptState(f"ledger entry {stream_id} of {organization_id}: {error}") from None

    def to_json(self) -> dict[str, Any]:
        """JSON form (None fields omitted, as serde does); ``amount_micros`` is authoritative."""
        out: dict[str, Any] = {
            "kind": "ledger",
            "id": self.entry_id,
            "organization_id": self.organization_id,
            "budget_id": self.budget_id,
            "currency": self.currency,
            "amount_micros": self.amount_micros,
            "meter_source": self.meter_source,
        }
        optional = {
            "ref_type": self.ref_type,
            "ref_id": self.ref_id,
            "session_id": self.session_id,
            "description": self.description,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        out.update(created_at=_utc(self.created_ms), created_ms=self.created_ms)
        out["stream_id"] = self.stream_id
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LedgerRecord:
        return cls(
            organization_id=str(d["organization_id"]),
            budget_id=str(d["budget_id"]),
            currency=str(d["currency"]),
            entry_id=str(d["id"]),
            amount_micros=int(d["amount_micros"]),
            meter_source=str(d["meter_source"]),
            ref_type=d.get("ref_type"),
            ref_id=d.get("ref_id"),
            session_id=d.get("session_id"),
            description=d.get("description"),
            created_ms=int(d["created_ms"]),
            stream_id=str(d["stream_id"]),
        )


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event of an organization's stream, as exported (id = its stream id)."""

    organization_id: str
    stream_id: str
    type: str
    budget_id: str
    balance_micros: int
    limit_micros: int
    currency: str
    soft_limit_micros: int | None
    soft_acknowledged: bool
    threshold_ppm: int | None
    created_ms: int

    @classmethod
    def from_stream(
        cls, organization_id: str, stream_id: str, fields: Mapping[str, str]
    ) -> EventRow:
        try:
            e = EventRecord.from_stream(stream_id, fields)
        except (KeyError, ValueError) as error:
            raise CorruptState(f"event {stream_id} of {organization_id}: {error}") from None
        return cls(
            organization_id=organization_id,
            stream_id=stream_id,
            type=e.type,
            budget_id=e.budget_id,
            balance_micros=e.balance_micros,
            limit_micros=e.limit_micros,
            currency=e.currency,
            soft_limit_micros=e.soft_limit_micros,
            soft_acknowledged=e.soft_acknowledged,
            threshold_ppm=e.threshold_ppm,
            created_ms=e.created_ms,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "event",
            "organization_id": self.organization_id,
            "stream_id": self.stream_id,
            "type": self.type,
            "budget_id": self.budget_id,
            "balance_micros": self.balance_micros,
            "limit_micros": self.limit_micros,
            "currency": self.currency,
            "soft_acknowledged": self.soft_acknowledged,
        }
        if self.soft_limit_micros is not None:
            out["soft_limit_micros"] = self.soft_limit_micros
        if self.threshold_ppm is not None:
            out["threshold_ppm"] = self.threshold_ppm
        out.update(created_at=_utc(self.created_ms), created_ms=self.created_ms)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EventRow:
        soft, thr = d.get("soft_limit_micros"), d.get("threshold_ppm")
        return cls(
            organization_id=str(d["organization_id"]),
            stream_id=str(d["stream_id"]),
            type=str(d["type"]),
            budget_id=str(d["budget_id"]),
            balance_micros=int(d["balance_micros"]),
            limit_micros=int(d["limit_micros"]),
            currency=str(d["currency"]),
            soft_limit_micros=None if soft is None else int(soft),
            soft_acknowledged=bool(d["soft_acknowledged"]),
            threshold_ppm=None if thr is None else int(thr),
            created_ms=int(d["created_ms"]),
        )


#: Hash fields left out of a snapshot's identity: outstanding holds come and go without a ledger
#: entry and are not restored (a reservation does not survive the loss of Redis).
_VOLATILE_FIELDS = frozenset({"held"})


@dataclass(frozen=True, slots=True)
class BudgetSnapshotRecord:
    """A budget hash (every field, as stored) read atomically with its ledger's last stream id.

    ``taken_us``: Redis server time of the read (µs); the latest snapshot of a budget is the one
    with the greatest (taken_us, ledger_last_id, updated).
    """

    organization_id: str
    budget_id: str
    taken_us: int
    ledger_last_id: str
    fields: Mapping[str, str]

    @property
    def snapshot_id(self) -> str:
        """Digest of org, budget, ledger last id and the non-volatile fields (the dedupe key)."""
        stable = {k: v for k, v in sorted(self.fields.items()) if k not in _VOLATILE_FIELDS}
        text = json.dumps(
            [self.organization_id, self.budget_id, self.ledger_last_id, stable],
            separators=(",", ":"),
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    @property
    def order_key(self) -> tuple[int, StreamId, int]:
        updated = self.fields.get("updated", "0")
        return self.taken_us, parse_stream_id(self.ledger_last_id), int(updated or 0)

    def field_int(self, name: str) -> int:
        try:
            return int(self.fields[name])
        except (KeyError, ValueError):
            raise CorruptState(f"snapshot of {self.budget_id}: field {name}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "budget",
            "snapshot_id": self.snapshot_id,
            "organization_id": self.organization_id,
            "budget_id": self.budget_id,
            "taken_us": self.taken_us,
            "ledger_last_id": self.ledger_last_id,
            "fields": dict(sorted(self.fields.items())),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BudgetSnapshotRecord:
        fields = d["fields"]
        if not isinstance(fields, dict):
            raise CorruptState(f"snapshot of {d.get('budget_id')}: fields is not an object")
        return cls(
            organization_id=str(d["organization_id"]),
            budget_id=str(d["budget_id"]),
            taken_us=int(d["taken_us"]),
            ledger_last_id=str(d["ledger_last_id"]),
            fields={str(k): str(v) for k, v in fields.items()},
        )


@dataclass(slots=True)
class ExportBatch:
    """What one sink write stores (each part idempotent on its own key)."""

    snapshots: list[BudgetSnapshotRecord] = field(default_factory=list)
    ledger: list[LedgerRecord] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.snapshots) + len(self.ledger) + len(self.events)


@dataclass(slots=True)
class LedgerTotals:
    """Aggregate of a budget's exported ledger entries (optionally up to a stream id)."""

    count: int = 0
    amount_micros: int = 0
    limit_change_micros: int = 0
    last_stream_id: str | None = None

    def add(self, record: LedgerRecord) -> None:
        self.count += 1
        self.amount_micros += record.amount_micros
        if record.meter_source == LIMIT_CHANGE_SOURCE:
            self.limit_change_micros += record.amount_micros
        last = self.last_stream_id
        if last is None or record.sid > parse_stream_id(last):
            self.last_stream_id = record.stream_id
