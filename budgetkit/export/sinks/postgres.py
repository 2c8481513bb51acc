"""PostgreSQL books: an append-only usage ledger, events and budget snapshots (asyncpg).

Tables (in ``schema``, default ``budgetkit``; created on ``open`` when missing):

- ``usage_ledger``: one row per ledger entry, primary key the ledger id; the reference system's
  usage-ledger columns (``budget_id``, ``amount``, ``meter_source``, ``ref_type``, ``ref_id``,
  ``session_id``, ``description``, ``created_at``) plus ``organization_id``, ``currency``, the
  exact ``amount_micros`` (``amount`` is generated from it as numeric(26,6)) and the Redis
  stream id (``stream_ms``, ``stream_seq``) that orders a budget's entries.
- ``budget_events``: primary key (organization_id, stream_id).
- ``budget_snapshots``: primary key snapshot_id; the whole budget hash as ``fields`` jsonb.

All three are append-only: a trigger rejects UPDATE, DELETE and TRUNCATE. A write is one
transaction of ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`` statements, so a
re-delivered entry is stored once, and the write returns only after COMMIT.

asyncpg is imported when the sink opens (``pip install asyncpg``); budgetkit does not depend on it.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from budgetkit._core.errors import InvalidInput
from budgetkit._core.replies import ms_to_datetime
from budgetkit.export.records import (
    BudgetSnapshotRecord,
    EventRow,
    ExportBatch,
    LedgerRecord,
    LedgerTotals,
    parse_stream_id,
)

__all__ = ["PostgresSink"]

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")

POOL_SIZE_MAX = 4
COMMAND_TIMEOUT_S = 60.0

DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.usage_ledger (
    id text PRIMARY KEY,
    organization_id text NOT NULL,
    budget_id text NOT NULL,
    currency text NOT NULL,
    amount_micros bigint NOT NULL,
    amount numeric(26, 6) GENERATED ALWAYS AS (round(amount_micros::numeric / 1000000, 6)) STORED,
    meter_source text NOT NULL,
    ref_type text,
    ref_id text,
    session_id text,
    description text,
    created_at timestamptz NOT NULL,
    created_ms bigint NOT NULL,
    stream_ms bigint NOT NULL,
    stream_seq bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ledger_budget
    ON {s}.usage_ledger (organization_id, budget_id, stream_ms, stream_seq);
CREATE TABLE IF NOT EXISTS {s}.budget_events (
    organization_id text NOT NULL,
    stream_id text NOT NULL,
    stream_ms bigint NOT NULL,
    stream_seq bigint NOT NULL,
    type text NOT NULL,
    budget_id text NOT NULL,
    balance_micros bigint NOT NULL,
    limit_micros bigint NOT NULL,
    currency text NOT NULL,
    soft_limit_micros bigint,
    soft_acknowledged boolean NOT NULL,
    threshold_ppm bigint,
    created_at timestamptz NOT NULL,
    created_ms bigint NOT NULL,
    PRIMARY KEY (organization_id, stream_id)
);
CREATE TABLE IF NOT EXISTS {s}.budget_snapshots (
    snapshot_id text PRIMARY KEY,
    organization_id text NOT NULL,
    budget_id text NOT NULL,
    taken_us bigint NOT NULL,
    ledger_last_id text NOT NULL,
    ledger_ms bigint NOT NULL,
    ledger_seq bigint NOT NULL,
    updated_ms bigint NOT NULL,
    fields jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_snapshots_latest ON {s}.budget_snapshots
    (organization_id, budget_id, taken_us DESC, ledger_ms DESC, ledger_seq DESC, updated_ms DESC);
CREATE OR REPLACE FUNCTION {s}.append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'budgetkit books are append-only (% on %)', TG_OP, TG_TABLE_NAME;
END $$;
"""

TABLES = ("usage_ledger", "budget_events", "budget_snapshots")

TRIGGERS = """
DROP TRIGGER IF EXISTS {t}_no_change ON {s}.{t};
CREATE TRIGGER {t}_no_change BEFORE UPDATE OR DELETE ON {s}.{t}
    FOR EACH ROW EXECUTE FUNCTION {s}.append_only();
DROP TRIGGER IF EXISTS {t}_no_truncate ON {s}.{t};
CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {s}.{t}
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.append_only();
"""

INSERT_LEDGER = """
INSERT INTO {s}.usage_ledger (id, organization_id, budget_id, currency, amount_micros,
    meter_source, ref_type, ref_id, session_id, description, created_at, created_ms,
    stream_ms, stream_seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::bigint[],
    $13::bigint[], $14::bigint[])
ON CONFLICT (id) DO NOTHING
"""

INSERT_EVENTS = """
INSERT INTO {s}.budget_events (organization_id, stream_id, stream_ms, stream_seq, type,
    budget_id, balance_micros, limit_micros, currency, soft_limit_micros, soft_acknowledged,
    threshold_ppm, created_at, created_ms)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
    $7::bigint[], $8::bigint[], $9::text[], $10::bigint[], $11::boolean[], $12::bigint[],
    $13::timestamptz[], $14::bigint[])
ON CONFLICT (organization_id, stream_id) DO NOTHING
"""

INSERT_SNAPSHOTS = """
INSERT INTO {s}.budget_snapshots (snapshot_id, organization_id, budget_id, taken_us,
    ledger_last_id, ledger_ms, ledger_seq, updated_ms, fields)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
    $6::bigint[], $7::bigint[], $8::bigint[], $9::jsonb[])
ON CONFLICT (snapshot_id) DO NOTHING
"""

SELECT_ORGS = """
SELECT organization_id FROM {s}.budget_snapshots
UNION SELECT organization_id FROM {s}.usage_ledger
UNION SELECT organization_id FROM {s}.budget_events
ORDER BY 1
"""

SELECT_SNAPSHOTS = """
SELECT DISTINCT ON (budget_id) budget_id, taken_us, ledger_last_id, fields::text AS fields
FROM {s}.budget_snapshots WHERE organization_id = $1
ORDER BY budget_id, taken_us DESC, ledger_ms DESC, ledger_seq DESC, updated_ms DESC
"""

_TOTALS_COLUMNS = """
SELECT l.budget_id, count(*) AS n, sum(l.amount_micros) AS amount,
    coalesce(sum(l.amount_micros) FILTER (WHERE l.meter_source = 'limit_change'), 0) AS lc,
    max(ARRAY[l.stream_ms, l.stream_seq]) AS last
FROM {s}.usage_ledger l
"""

SELECT_TOTALS = _TOTALS_COLUMNS + "WHERE l.organization_id = $1 GROUP BY l.budget_id"

SELECT_TOTALS_UNTIL = (
    _TOTALS_COLUMNS
    + """JOIN unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(bid, ms, seq)
    ON l.budget_id = u.bid AND (l.stream_ms, l.stream_seq) <= (u.ms, u.seq)
WHERE l.organization_id = $1 GROUP BY l.budget_id"""
)

SELECT_PRESENT = "SELECT id FROM {s}.usage_ledger WHERE organization_id = $1 AND id = ANY($2)"

_ENTRY_COLUMNS = """
SELECT l.id, l.budget_id, l.currency, l.amount_micros, l.meter_source, l.ref_type, l.ref_id,
    l.session_id, l.description, l.created_ms, l.stream_ms, l.stream_seq
FROM {s}.usage_ledger l
"""

SELECT_ENTRIES = (
    _ENTRY_COLUMNS
    + """WHERE l.organization_id = $1 AND ($2::text IS NULL OR l.budget_id = $2)
ORDER BY l.budget_id, l.stream_ms, l.stream_seq"""
)

SELECT_ENTRIES_AFTER = (
    _ENTRY_COLUMNS
    + """JOIN unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(bid, ms, seq)
    ON l.budget_id = u.bid AND (l.stream_ms, l.stream_seq) > (u.ms, u.seq)
WHERE l.organization_id = $1
ORDER BY l.budget_id, l.stream_ms, l.stream_seq"""
)

SELECT_EVENTS = """
SELECT stream_id, type, budget_id, balance_micros, limit_micros, currency, soft_limit_micros,
    soft_acknowledged, threshold_ppm, created_ms
FROM {s}.budget_events WHERE organization_id = $1 ORDER BY stream_ms, stream_seq
"""

SELECT_LAST_EVENT = """
SELECT stream_id FROM {s}.budget_events WHERE organization_id = $1
ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1
"""


def _asyncpg() -> Any:
    try:
        return importlib.import_module("asyncpg")
    except ImportError:
        raise InvalidInput("the PostgreSQL sink needs asyncpg: pip install asyncpg") from None


def _bounds(bounds: Mapping[str, str]) -> tuple[list[str], list[int], list[int]]:
    ids, ms, seq = [], [], []
    for budget_id, text in bounds.items():
        sid = parse_stream_id(text)
        ids.append(budget_id)
        ms.append(sid[0])
        seq.append(sid[1])
    return ids, ms, seq


class PostgresSink:
    """Books in PostgreSQL. ``dsn``: a ``postgresql://`` URL; ``schema``: where the tables live
    (lowercase identifier). Use ``await PostgresSink.connect(dsn)`` or ``open()`` before use."""

    def __init__(self, dsn: str, *, schema: str = "budgetkit", pool_size: int = 2) -> None:
        if not _SCHEMA_RE.fullmatch(schema):
            raise InvalidInput("schema must be a lowercase SQL identifier (a-z, 0-9, _)")
        if not 1 <= pool_size <= POOL_SIZE_MAX:
            raise InvalidInput(f"pool_size must be in [1, {POOL_SIZE_MAX}]")
        self._dsn = dsn
        self.schema = schema
        self._pool_size = pool_size
        self._pool: Any = None

    @classmethod
    async def connect(
        cls, dsn: str, *, schema: str = "budgetkit", pool_size: int = 2
    ) -> PostgresSink:
        sink = cls(dsn, schema=schema, pool_size=pool_size)
        await sink.open()
        return sink

    def _sql(self, text: str) -> str:
        return text.format(s=f'"{self.schema}"')

    async def open(self) -> None:
        """Connects and creates the schema, tables and append-only triggers when missing."""
        if self._pool is not None:
            return
        asyncpg = _asyncpg()
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            command_timeout=COMMAND_TIMEOUT_S,
        )
        ddl = self._sql(DDL) + "".join(
            TRIGGERS.format(s=f'"{self.schema}"', t=table) for table in TABLES
        )
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise concurrent first opens (CREATE … IF NOT EXISTS races otherwise).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.schema)
            await conn.execute(ddl)

    def _need_pool(self) -> Any:
        if self._pool is None:
            raise InvalidInput("PostgresSink is not open: call `await sink.open()` first")
        return self._pool

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- writing ------------------------------------------------------------------------------

    async def write(self, batch: ExportBatch) -> None:
        pool = self._need_pool()
        async with pool.acquire() as conn, conn.transaction():
            if batch.snapshots:
                await conn.execute(self._sql(INSERT_SNAPSHOTS), *_snapshot_columns(batch))
            if batch.ledger:
                await conn.execute(self._sql(INSERT_LEDGER), *_ledger_columns(batch))
            if batch.events:
                await conn.execute(self._sql(INSERT_EVENTS), *_event_columns(batch))

    # -- reading ------------------------------------------------------------------------------

    async def organizations(self) -> list[str]:
        rows = await self._need_pool().fetch(self._sql(SELECT_ORGS))
        return [str(r[0]) for r in rows]

    async def snapshots(self, organization_id: str) -> dict[str, BudgetSnapshotRecord]:
        rows = await self._need_pool().fetch(self._sql(SELECT_SNAPSHOTS), organization_id)
        out = {}
        for r in rows:
            fields = json.loads(r["fields"])
            out[str(r["budget_id"])] = BudgetSnapshotRecord(
                organization_id=organization_id,
                budget_id=str(r["budget_id"]),
                taken_us=int(r["taken_us"]),
                ledger_last_id=str(r["ledger_last_id"]),
                fields={str(k): str(v) for k, v in fields.items()},
            )
        return out

    async def ledger_totals(
        self,
        organization_id: str,
        until: Mapping[str, str] | None = None,
        probe_ids: Collection[str] = (),
    ) -> tuple[dict[str, LedgerTotals], set[str]]:
        pool = self._need_pool()
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            if until is None:
                rows = await conn.fetch(self._sql(SELECT_TOTALS), organization_id)
                totals = {}
            else:
                sql = self._sql(SELECT_TOTALS_UNTIL)
                rows = await conn.fetch(sql, organization_id, *_bounds(until))
                totals = {b: LedgerTotals() for b in until}
            present: set[str] = set()
            if probe_ids:
                found = await conn.fetch(self._sql(SELECT_PRESENT), organization_id, [*probe_ids])
                present = {str(r[0]) for r in found}
        for r in rows:
            last = r["last"]
            totals[str(r["budget_id"])] = LedgerTotals(
                count=int(r["n"]),
                amount_micros=int(r["amount"]),
                limit_change_micros=int(r["lc"]),
                last_stream_id=f"{last[0]}-{last[1]}",
            )
        return totals, present

    async def ledger_entries(
        self,
        organization_id: str,
        budget_id: str | None = None,
        after: Mapping[str, str] | None = None,
    ) -> list[LedgerRecord]:
        pool = self._need_pool()
        if after is None:
            rows = await pool.fetch(self._sql(SELECT_ENTRIES), organization_id, budget_id)
        else:
            bounds = {b: s for b, s in after.items() if budget_id is None or b == budget_id}
            rows = await pool.fetch(
                self._sql(SELECT_ENTRIES_AFTER), organization_id, *_bounds(bounds)
            )
        return [
            LedgerRecord(
                organization_id=organization_id,
                budget_id=str(r["budget_id"]),
                currency=str(r["currency"]),
                entry_id=str(r["id"]),
                amount_micros=int(r["amount_micros"]),
                meter_source=str(r["meter_source"]),
                ref_type=r["ref_type"],
                ref_id=r["ref_id"],
                session_id=r["session_id"],
                description=r["description"],
                created_ms=int(r["created_ms"]),
                stream_id=f"{r['stream_ms']}-{r['stream_seq']}",
            )
            for r in rows
        ]

    async def events(self, organization_id: str) -> list[EventRow]:
        rows = await self._need_pool().fetch(self._sql(SELECT_EVENTS), organization_id)
        return [
            EventRow(
                organization_id=organization_id,
                stream_id=str(r["stream_id"]),
                type=str(r["type"]),
                budget_id=str(r["budget_id"]),
                balance_micros=int(r["balance_micros"]),
                limit_micros=int(r["limit_micros"]),
                currency=str(r["currency"]),
                soft_limit_micros=r["soft_limit_micros"],
                soft_acknowledged=bool(r["soft_acknowledged"]),
                threshold_ppm=r["threshold_ppm"],
                created_ms=int(r["created_ms"]),
            )
            for r in rows
        ]

    async def last_event_id(self, organization_id: str) -> str | None:
        value = await self._need_pool().fetchval(self._sql(SELECT_LAST_EVENT), organization_id)
        return None if value is None else str(value)


def _snapshot_columns(batch: ExportBatch) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(9)]
    for s in batch.snapshots:
        ms, seq = parse_stream_id(s.ledger_last_id)
        row = [
            s.snapshot_id,
            s.organization_id,
            s.budget_id,
            s.taken_us,
            s.ledger_last_id,
            ms,
            seq,
            int(s.fields.get("updated") or 0),
            json.dumps(dict(sorted(s.fields.items())), separators=(",", ":")),
        ]
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


def _ledger_columns(batch: ExportBatch) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(14)]
    for r in batch.ledger:
        ms, seq = r.sid
        row = [
            r.entry_id,
            r.organization_id,
            r.budget_id,
            r.currency,
            r.amount_micros,
            r.meter_source,
            r.ref_type,
            r.ref_id,
            r.session_id,
            r.description,
            ms_to_datetime(r.created_ms),
            r.created_ms,
            ms,
            seq,
        ]
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


def _event_columns(batch: ExportBatch) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(14)]
    for e in batch.events:
        ms, seq = parse_stream_id(e.stream_id)
        row = [
            e.organization_id,
            e.stream_id,
            ms,
            seq,
            e.type,
            e.budget_id,
            e.balance_micros,
            e.limit_micros,
            e.currency,
            e.soft_limit_micros,
            e.soft_acknowledged,
            e.threshold_ppm,
            ms_to_datetime(e.created_ms),
            e.created_ms,
        ]
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols
