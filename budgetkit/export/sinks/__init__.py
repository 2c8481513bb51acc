"""Where the books are stored: the ``ExportSink`` protocol and its two implementations.

``JsonlSink`` (``sinks/jsonl.py``: append-only JSON Lines files) and ``PostgresSink``
(``sinks/postgres.py``: append-only tables, asyncpg imported when it opens). ``open_sink`` makes
one from the CLI's ``--sink`` spec.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol

from budgetkit._core.errors import InvalidInput
from budgetkit.export.records import (
    BudgetSnapshotRecord,
    EventRow,
    ExportBatch,
    LedgerRecord,
    LedgerTotals,
)
from budgetkit.export.sinks.jsonl import JsonlSink
from budgetkit.export.sinks.postgres import PostgresSink

__all__ = ["ExportSink", "JsonlSink", "PostgresSink", "open_sink"]


class ExportSink(Protocol):
    """A durable store of the books. Every write is idempotent on the records' ids, so an
    at-least-once exporter never duplicates anything; a write returns only once it is durable
    (the exporter acknowledges, and may trim, the stream entries only after that)."""

    async def write(self, batch: ExportBatch) -> None: ...

    async def organizations(self) -> list[str]:
        """Every organization the books know (sorted)."""
        ...

    async def snapshots(self, organization_id: str) -> dict[str, BudgetSnapshotRecord]:
        """The latest snapshot of each budget of the organization, by budget id."""
        ...

    async def ledger_totals(
        self,
        organization_id: str,
        until: Mapping[str, str] | None = None,
        probe_ids: Collection[str] = (),
    ) -> tuple[dict[str, LedgerTotals], set[str]]:
        """Per budget totals of the exported entries (with ``until``: only those budgets, and
        only entries with stream id ≤ until[budget]); and which of ``probe_ids`` (ledger ids)
        the books hold. Both read from one consistent view of the books."""
        ...

    async def ledger_entries(
        self,
        organization_id: str,
        budget_id: str | None = None,
        after: Mapping[str, str] | None = None,
    ) -> list[LedgerRecord]:
        """Entries sorted by (budget id, stream id); ``after``: only those budgets, only entries
        with stream id > after[budget]."""
        ...

    async def events(self, organization_id: str) -> list[EventRow]:
        """The organization's exported events in stream order."""
        ...

    async def last_event_id(self, organization_id: str) -> str | None: ...

    async def aclose(self) -> None: ...


async def open_sink(spec: str, *, schema: str = "budgetkit", fsync: bool = True) -> ExportSink:
    """A sink from a CLI-style spec: ``postgresql://…`` / ``postgres://…`` (opened, tables
    created in ``schema``), ``jsonl:DIR`` or a plain directory path (JSON Lines)."""
    if spec.startswith(("postgresql://", "postgres://")):
        return await PostgresSink.connect(spec, schema=schema)
    directory = spec.removeprefix("jsonl:")
    if not directory:
        raise InvalidInput("a sink is postgresql://… or jsonl:DIRECTORY")
    return JsonlSink(directory, fsync=fsync)
