"""JSON Lines books: append-only files in one directory, deduplicated on read.

``budgets.jsonl`` (budget snapshots), ``ledger.jsonl`` (ledger entries) and ``events.jsonl``
(events), one JSON object per line (``budgetkit.export.records`` documents each record). A write
appends every line of the batch, flushes and (by default) fsyncs before it returns, so the
exporter acknowledges only entries that are on disk. Writes are at-least-once: an entry
re-delivered after a crash is appended again, and readers keep the first line of each id
(ledger id, (org, stream id), snapshot id). A line torn by a crash is skipped on read (counted
in ``skipped_lines``): its entry was never acknowledged, so it is delivered and written again.

Reading is incremental: the sink remembers how far it has parsed each file and reads only what
was appended since (other processes may append meanwhile). Rotated files named ``ledger*.jsonl``
(and so on) are read too, in name order. The whole book is indexed in memory, so this sink suits
books of up to a few million entries; PostgreSQL (``PostgresSink``) scales further.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetkit._core.errors import CorruptState
from budgetkit.export.records import (
    BudgetSnapshotRecord,
    EventRow,
    ExportBatch,
    LedgerRecord,
    LedgerTotals,
    parse_stream_id,
)

__all__ = ["JsonlSink"]

FILES = {"budget": "budgets", "ledger": "ledger", "event": "events"}

#: Bytes read from a file per step while indexing.
READ_CHUNK_BYTES = 1 << 20


@dataclass
class _Index:
    """Everything parsed so far, deduplicated; ``offsets``: bytes parsed per file."""

    offsets: dict[Path, int] = field(default_factory=dict)
    ledger: dict[str, dict[str, LedgerRecord]] = field(default_factory=dict)  # org -> id -> rec
    events: dict[str, dict[str, EventRow]] = field(default_factory=dict)  # org -> sid -> row
    snapshots: dict[str, dict[str, BudgetSnapshotRecord]] = field(default_factory=dict)
    snapshot_ids: set[str] = field(default_factory=set)
    lines: int = 0
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILES, 0))
    skipped_lines: int = 0

    def add(self, kind: str, d: Mapping[str, Any]) -> None:
        if kind == "ledger":
            rec = LedgerRecord.from_json(d)
            self._keep(kind, self.ledger.setdefault(rec.organization_id, {}), rec.entry_id, rec)
        elif kind == "event":
            row = EventRow.from_json(d)
            self._keep(kind, self.events.setdefault(row.organization_id, {}), row.stream_id, row)
        else:
            snap = BudgetSnapshotRecord.from_json(d)
            if snap.snapshot_id in self.snapshot_ids:
                self.duplicates[kind] += 1
                return
            self.snapshot_ids.add(snap.snapshot_id)
            latest = self.snapshots.setdefault(snap.organization_id, {})
            old = latest.get(snap.budget_id)
            if old is None or snap.order_key > old.order_key:
                latest[snap.budget_id] = snap

    def _keep(self, kind: str, table: dict[str, Any], key: str, value: Any) -> None:
        if key in table:
            self.duplicates[kind] += 1
        else:
            table[key] = value


class JsonlSink:
    """Books as JSON Lines files under ``directory`` (created if missing).

    ``fsync``: fsync every write before returning (default; turn off only for tests or when
    the files live on storage that is made durable otherwise).
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._index = _Index()
        self._read_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._opened: set[Path] = set()

    def path(self, kind: str) -> Path:
        """The file that records of ``kind`` (budget, ledger, event) are appended to."""
        return self.directory / f"{FILES[kind]}.jsonl"

    # -- writing ------------------------------------------------------------------------------

    async def write(self, batch: ExportBatch) -> None:
        groups: dict[str, list[str]] = {"budget": [], "ledger": [], "event": []}
        groups["budget"] = [_line(s.to_json()) for s in batch.snapshots]
        groups["ledger"] = [_line(r.to_json()) for r in batch.ledger]
        groups["event"] = [_line(e.to_json()) for e in batch.events]
        async with self._write_lock:
            for kind, lines in groups.items():
                if lines:
                    await asyncio.to_thread(self._append, self.path(kind), lines)

    def _append(self, path: Path, lines: list[str]) -> None:
        data = "".join(lines).encode("utf-8")
        with path.open("ab") as out:
            if path not in self._opened:
                # A torn last line (a crash mid-write) must not swallow the next record.
                if out.tell() > 0 and not _ends_with_newline(path):
                    data = b"\n" + data
                self._opened.add(path)
            out.write(data)
            out.flush()
            if self._fsync:
                os.fsync(out.fileno())

    # -- reading ------------------------------------------------------------------------------

    async def _refresh(self) -> _Index:
        async with self._read_lock:
            await asyncio.to_thread(self._read_new)
            return self._index

    def _read_new(self) -> None:
        for kind, stem in FILES.items():
            for path in sorted(self.directory.glob(f"{stem}*.jsonl")):
                self._read_file(kind, path)

    def _read_file(self, kind: str, path: Path) -> None:
        index = self._index
        offset = index.offsets.get(path, 0)
        with path.open("rb") as src:
            src.seek(offset)
            carry = b""
            while chunk := src.read(READ_CHUNK_BYTES):
                data = carry + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data  # no complete line yet
                    continue
                for raw in data[:cut].split(b"\n"):
                    self._parse_line(kind, raw)
                offset += cut + 1
                carry = data[cut + 1 :]
        index.offsets[path] = offset

    def _parse_line(self, kind: str, raw: bytes) -> None:
        index = self._index
        if not raw.strip():
            return
        index.lines += 1
        try:
            d = json.loads(raw)
            if not isinstance(d, dict) or d.get("kind") != kind:
                raise ValueError(f"not a {kind} record")
            index.add(kind, d)
        except (ValueError, KeyError, TypeError, CorruptState):
            index.skipped_lines += 1  # a torn line: its entry was never acknowledged

    @property
    def stats(self) -> dict[str, int]:
        """Lines parsed, duplicates ignored (per kind: budget, ledger, event), unreadable lines
        skipped, as of the last read."""
        i = self._index
        out = {"lines": i.lines, "skipped_lines": i.skipped_lines}
        out.update({f"{kind}_duplicates": n for kind, n in i.duplicates.items()})
        return out

    async def organizations(self) -> list[str]:
        i = await self._refresh()
        return sorted(set(i.ledger) | set(i.events) | set(i.snapshots))

    async def snapshots(self, organization_id: str) -> dict[str, BudgetSnapshotRecord]:
        i = await self._refresh()
        return dict(i.snapshots.get(organization_id, {}))

    async def ledger_totals(
        self,
        organization_id: str,
        until: Mapping[str, str] | None = None,
        probe_ids: Collection[str] = (),
    ) -> tuple[dict[str, LedgerTotals], set[str]]:
        i = await self._refresh()
        records = i.ledger.get(organization_id, {})
        bounds = None if until is None else {b: parse_stream_id(s) for b, s in until.items()}
        totals: dict[str, LedgerTotals] = {}
        if bounds is not None:
            totals = {b: LedgerTotals() for b in bounds}
        for rec in records.values():
            if bounds is not None:
                bound = bounds.get(rec.budget_id)
                if bound is None or rec.sid > bound:
                    continue
            totals.setdefault(rec.budget_id, LedgerTotals()).add(rec)
        return totals, {p for p in probe_ids if p in records}

    async def ledger_entries(
        self,
        organization_id: str,
        budget_id: str | None = None,
        after: Mapping[str, str] | None = None,
    ) -> list[LedgerRecord]:
        i = await self._refresh()
        bounds = None if after is None else {b: parse_stream_id(s) for b, s in after.items()}
        out = []
        for rec in i.ledger.get(organization_id, {}).values():
            if budget_id is not None and rec.budget_id != budget_id:
                continue
            if bounds is not None:
                bound = bounds.get(rec.budget_id)
                if bound is None or rec.sid <= bound:
                    continue
            out.append(rec)
        out.sort(key=lambda r: (r.budget_id, r.sid))
        return out

    async def events(self, organization_id: str) -> list[EventRow]:
        i = await self._refresh()
        rows = list(i.events.get(organization_id, {}).values())
        rows.sort(key=lambda r: parse_stream_id(r.stream_id))
        return rows

    async def last_event_id(self, organization_id: str) -> str | None:
        rows = await self.events(organization_id)
        return rows[-1].stream_id if rows else None

    async def aclose(self) -> None:
        """Nothing to release: every write closes its file."""


def _line(d: Mapping[str, Any]) -> str:
    return json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n"


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as src:
        src.seek(-1, os.SEEK_END)
        return src.read(1) == b"\n"
