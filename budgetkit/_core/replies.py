"""Decodes the flat replies of the Lua scripts (see the reply shape in lua/_lib.lua).

Replies have a fixed shape, so decoding is positional. Numbers arrive as integer replies (or, in
full budget records and replayed idempotency records, as ``%d``-formatted strings): both decode
exactly with ``int``. Text fields arrive as bytes. Nothing here talks to Redis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from budgetkit._core.amounts import from_micros
from budgetkit._core.errors import BudgetkitError, CorruptState, ScriptError, short_repr
from budgetkit._core.models import (
    Budget,
    BudgetEvent,
    BudgetEventData,
    BudgetStatus,
    BudgetSubjectType,
    LedgerEntry,
    parse_period,
    trusted,
)
from budgetkit._core.rules import BudgetSnapshot, event_message

RECORD_WIDTH = 19
SNAPSHOT_WIDTH = 10
ENTRY_WIDTH = 9
EVENT_WIDTH = 10

#: One decoded reply field: text, or an exact integer.
Field = str | int
_Model = TypeVar("_Model", bound=BaseModel)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Up to the last millisecond of year 9999 (datetime's range), times take the fast path.
_FAST_MS_MAX = 253_402_300_799_999
#: The last conversion, (ms, datetime): the entries and events of one call share their time.
_last_time: tuple[int, datetime] = (0, _EPOCH)


def ms_to_datetime(ms: int) -> datetime:
    """UTC datetime of integer milliseconds since the epoch (exact)."""
    global _last_time
    last = _last_time
    if last[0] == ms:
        return last[1]  # datetimes are immutable: sharing one is safe
    if 0 <= ms <= _FAST_MS_MAX:
        value = _EPOCH + timedelta(milliseconds=ms)
    else:  # out of datetime's range or before the epoch: the errors as they always were
        seconds, millis = divmod(ms, 1000)
        value = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=millis * 1000)
    _last_time = (ms, value)
    return value


def text_of(value: Any) -> str:
    """A Redis reply value as text (bytes are UTF-8)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _decode_all(raw: Any) -> list[Field]:
    """Bytes become str; integer replies stay int."""
    return [v.decode() if type(v) is bytes else v for v in raw]  # UTF-8


def _opt_int(value: Field) -> int | None:
    return None if value == "" else int(value)


def _opt_text(value: Field) -> str | None:
    return str(value) if value != "" else None


#: The scope levels of a call's subject keys, in key order: (subject type wire, subject id).
Levels = Sequence[tuple[str, str]]


def snapshot_from_fields(f: Sequence[Field], levels: Levels = ()) -> BudgetSnapshot:
    """A check snapshot from SNAPSHOT_WIDTH fields: id, currency, limit, balance, holds, soft
    limit ('' = none), status, soft acknowledged, warn ppm, 1-based index of the subject key it
    was found under (into ``levels``; 0 = none). Its balance is the available one."""
    held = int(f[4])
    level = int(f[9])
    subject_type, subject_id = levels[level - 1] if 0 < level <= len(levels) else (None, None)
    return BudgetSnapshot(
        budget_id=str(f[0]),
        currency=str(f[1]),
        limit_micros=int(f[2]),
        balance_micros=int(f[3]) - held,
        soft_limit_micros=_opt_int(f[5]),
        status=str(f[6]),
        soft_acknowledged=int(f[7]) == 1,
        warn_fraction_ppm=int(f[8]),
        held_micros=held,
        subject_type=subject_type,
        subject_id=subject_id,
    )


@dataclass(frozen=True, slots=True)
class BudgetRecord:
    """One budget exactly as stored (amounts in micros, times in ms)."""

    id: str
    organization_id: str
    subject_type_wire: str
    subject_id: str
    currency: str
    limit_micros: int
    soft_limit_micros: int | None
    balance_micros: int
    held_micros: int
    warn_fraction_ppm: int
    period_json: str
    period_started_ms: int | None
    metadata_json: str
    status: str
    operator_paused: bool
    soft_acknowledged: bool
    created_ms: int
    updated_ms: int
    rollover_max_micros: int | None = None

    @classmethod
    def from_fields(cls, f: Sequence[Field]) -> BudgetRecord:
        return cls(
            id=str(f[0]),
            organization_id=str(f[1]),
            subject_type_wire=str(f[2]),
            subject_id=str(f[3]),
            currency=str(f[4]),
            limit_micros=int(f[5]),
            soft_limit_micros=_opt_int(f[6]),
            balance_micros=int(f[7]),
            held_micros=int(f[8]),
            warn_fraction_ppm=int(f[9]),
            period_json=str(f[10]),
            period_started_ms=_opt_int(f[11]),
            metadata_json=str(f[12]),
            status=str(f[13]),
            operator_paused=int(f[14]) == 1,
            soft_acknowledged=int(f[15]) == 1,
            created_ms=int(f[16]),
            updated_ms=int(f[17]),
            rollover_max_micros=_opt_int(f[18]),
        )

    def to_budget(self) -> Budget:
        """The seed model; a record that does not parse is CorruptState (the scripts check the
        same fields before writing, so this is a second line of defence)."""
        try:
            return self._to_budget()
        except (ValidationError, ValueError, BudgetkitError) as error:
            raise CorruptState(f"budget {self.id}: {short_repr(str(error))}") from None

    def _to_budget(self) -> Budget:
        period = parse_period(json.loads(self.period_json)) if self.period_json else None
        started, roll = self.period_started_ms, self.rollover_max_micros
        return Budget(
            id=self.id,
            organization_id=self.organization_id,
            subject_type=BudgetSubjectType.parse(self.subject_type_wire),
            subject_id=self.subject_id,
            currency=self.currency,
            limit=from_micros(self.limit_micros),
            soft_limit=None
            if self.soft_limit_micros is None
            else from_micros(self.soft_limit_micros),
            balance=from_micros(self.balance_micros),
            period=period,
            period_started_at=None if started is None else ms_to_datetime(started),
            metadata=json.loads(self.metadata_json) if self.metadata_json else None,
            status=BudgetStatus.parse(self.status),
            created_at=ms_to_datetime(self.created_ms),
            updated_at=ms_to_datetime(self.updated_ms),
            rollover_max=None if roll is None else from_micros(roll),
        )


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """One ledger entry as stored."""

    id: str
    budget_id: str
    amount_micros: int
    meter_source: str
    ref_type: str | None
    ref_id: str | None
    session_id: str | None
    description: str | None
    created_ms: int

    @classmethod
    def from_fields(cls, f: Sequence[Field]) -> EntryRecord:
        return cls(
            id=str(f[0]),
            budget_id=str(f[1]),
            amount_micros=int(f[2]),
            meter_source=str(f[3]),
            ref_type=_opt_text(f[4]),
            ref_id=_opt_text(f[5]),
            session_id=_opt_text(f[6]),
            description=_opt_text(f[7]),
            created_ms=int(f[8]),
        )

    def to_entry(self, currency: str | None = None, *, checked: bool = True) -> LedgerEntry:
        """The seed model; ``currency`` is the budget's (Python-only field). ``checked=False``
        skips validation, for an entry the call's own script just wrote (models.trusted)."""
        return _model(
            LedgerEntry,
            checked,
            currency=currency,
            id=self.id,
            budget_id=self.budget_id,
            amount=from_micros(self.amount_micros),
            meter_source=self.meter_source,
            ref_type=self.ref_type,
            ref_id=self.ref_id,
            session_id=self.session_id,
            description=self.description,
            created_at=ms_to_datetime(self.created_ms),
        )


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event as stored in the organization's event stream."""

    stream_id: str
    type: str
    budget_id: str
    balance_micros: int
    limit_micros: int
    currency: str
    soft_limit_micros: int | None
    soft_acknowledged: bool
    created_ms: int
    threshold_ppm: int | None = None

    @classmethod
    def from_fields(cls, f: Sequence[Field]) -> EventRecord:
        return cls(
            stream_id=str(f[0]),
            type=str(f[1]),
            budget_id=str(f[2]),
            balance_micros=int(f[3]),
            limit_micros=int(f[4]),
            currency=str(f[5]),
            soft_limit_micros=_opt_int(f[6]),
            soft_acknowledged=int(f[7]) == 1,
            created_ms=int(f[8]),
            threshold_ppm=_opt_int(f[9]) if len(f) > 9 else None,
        )

    @classmethod
    def from_stream(cls, stream_id: str, fields: Mapping[str, str]) -> EventRecord:
        names = ("type", "bid", "bal", "lim", "cur", "soft", "ack", "ts", "thr")
        return cls.from_fields([stream_id, *(fields.get(n, "") for n in names)])

    def to_event(self, organization_id: str, *, checked: bool = True) -> BudgetEvent:
        """The event model; ``checked=False`` skips validation, for an event the call's own
        script just emitted (models.trusted)."""
        soft = self.soft_limit_micros
        message = event_message(
            self.type,
            self.limit_micros,
            self.balance_micros,
            soft,
            self.currency,
            self.soft_acknowledged,
            self.threshold_ppm,
        )
        ppm = self.threshold_ppm
        data = _model(
            BudgetEventData,
            checked,
            budget_id=self.budget_id,
            balance=from_micros(self.balance_micros),
            limit=from_micros(self.limit_micros),
            currency=self.currency,
            message=message,
            soft_limit=None if soft is None else from_micros(soft),
            threshold=None if ppm is None else ppm / 1_000_000,
        )
        return _model(
            BudgetEvent,
            checked,
            id=self.stream_id,
            type=self.type,
            organization_id=organization_id,
            created_at=ms_to_datetime(self.created_ms),
            data=data,
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """The shared reply: the budgets (full records, or check snapshots from the scope scripts),
    the ledger entries written, the events emitted."""

    now_ms: int
    budgets: list[BudgetRecord]
    snapshots: list[BudgetSnapshot]
    entries: list[EntryRecord]
    events: list[EventRecord]
    replayed: bool = False
    tags: tuple[str, ...] = ()
    #: Snapshot replies: until when (ms, exclusive) the budgets stay as shown by the clock
    #: alone (the earliest period end or hold expiry; lua/_lib.lua valid_until); None otherwise.
    valid_until_ms: int | None = None

    def currencies(self) -> dict[str, str]:
        """Budget id -> currency of every budget in the reply (to label its entries)."""
        found = {s.budget_id: s.currency for s in self.snapshots}
        found.update((b.id, b.currency) for b in self.budgets)
        return found

    def ledger_entries(self) -> list[LedgerEntry]:
        """The entries written, each labelled with its budget's currency (built unvalidated:
        the call's own script just wrote them)."""
        if not self.entries:
            return []
        currencies = self.currencies()
        return [e.to_entry(currencies.get(e.budget_id), checked=False) for e in self.entries]

    def budget_events(self, organization_id: str) -> list[BudgetEvent]:
        """The events emitted (built unvalidated: the call's own script just emitted them)."""
        return [e.to_event(organization_id, checked=False) for e in self.events]


def _model(cls: type[_Model], checked: bool, /, **values: Any) -> _Model:
    """``cls(**values)``, or the same object unvalidated (models.trusted) unless ``checked``."""
    return cls(**values) if checked else trusted(cls, **values)


def _chunks(values: list[Field], at: int, count: int, width: int) -> list[list[Field]]:
    """``count`` runs of ``width`` fields from ``values[at]``; ValueError past the end."""
    end = at + count * width
    if count < 0 or end > len(values):
        raise ValueError(f"{count} records of {width} fields at {at} of {len(values)}")
    return [values[i : i + width] for i in range(at, end, width)]


def parse_reply(raw: Any, tags: int = 0, snapshots: bool = False, levels: Levels = ()) -> Reply:
    """Decodes the shared reply shape, after an optional 'replayed' marker and ``tags`` leading
    tag fields (reserve.lua's verdict); ``snapshots`` for the scope scripts' budget shape, whose
    budgets are attributed to ``levels`` (the call's subject keys). A malformed reply is a
    ScriptError (a bug)."""
    try:
        values = _decode_all(raw)
        replayed = bool(values) and values[0] == "replayed"
        at = 1 if replayed else 0
        leading = tuple(str(v) for v in values[at : at + tags])
        if len(leading) != tags:
            raise ValueError(f"{len(leading)} of {tags} leading tags")
        at += tags
        now_ms = int(values[at])
        count = int(values[at + 1])
        at += 2
        records: list[BudgetRecord] = []
        snaps: list[BudgetSnapshot] = []
        if snapshots:
            chunks = _chunks(values, at, count, SNAPSHOT_WIDTH)
            snaps = [snapshot_from_fields(c, levels) for c in chunks]
            at += count * SNAPSHOT_WIDTH
        else:
            chunks = _chunks(values, at, count, RECORD_WIDTH)
            records = [BudgetRecord.from_fields(c) for c in chunks]
            at += count * RECORD_WIDTH
        count = int(values[at])
        entries = [EntryRecord.from_fields(c) for c in _chunks(values, at + 1, count, ENTRY_WIDTH)]
        at += 1 + count * ENTRY_WIDTH
        count = int(values[at])
        events = [EventRecord.from_fields(c) for c in _chunks(values, at + 1, count, EVENT_WIDTH)]
        at += 1 + count * EVENT_WIDTH
        valid_until = int(values[at]) if snapshots and at < len(values) else None
    except (IndexError, ValueError, TypeError) as error:
        raise ScriptError(f"malformed script reply: {error}") from error
    return Reply(now_ms, records, snaps, entries, events, replayed, leading, valid_until)


def parse_entries(raw: Any) -> tuple[str, list[EntryRecord]]:
    """Decodes ledger.lua's reply: the budget's currency, a count, then ENTRY_WIDTH fields per
    entry."""
    try:
        values = _decode_all(raw)
        currency = str(values[0])
        count = int(values[1])
        chunks = _chunks(values, 2, count, ENTRY_WIDTH)
        return currency, [EntryRecord.from_fields(c) for c in chunks]
    except (IndexError, ValueError, TypeError) as error:
        raise ScriptError(f"malformed ledger reply: {error}") from error
