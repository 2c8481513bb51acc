"""Ledger export: drain every organization's ledger and event streams into durable books.

The exporter reads each stream through a Redis consumer group (at-least-once), writes what it
read to a sink (``JsonlSink``, ``PostgresSink``: idempotent on the entry id), and only then
acknowledges the entries (XACK) and trims them from Redis (XTRIM MINID below the oldest entry
any group of the stream has not acknowledged). So Redis keeps only what is not exported yet,
and its memory stays bounded under continuous load.

One pass (``export_once``), per organization (found by SCAN of ``P:{org}:all``):

1. per chunk of budgets, in one MULTI: Redis TIME, each budget hash (HGETALL) and the last id of
   its ledger stream (XINFO STREAM). A budget whose hash or ledger position changed since this
   exporter last wrote it gets a snapshot record: the books can rebuild the budget from it.
2. the chunk's ledger streams: first the entries delivered to this consumer but never
   acknowledged (a crash between the sink write and XACK), then new ones (XREADGROUP ``>``),
   ``batch`` per stream per read, at most ``rounds_max`` reads per pass; each read is written to
   the sink (with the chunk's snapshots in the first write), then acknowledged.
3. the organization's event stream, the same way.
4. with ``trim``: XTRIM MINID of every stream this pass acknowledged entries on.

``reconcile`` and ``restore`` (``budgetkit.export_books``) read the books back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from budgetkit.client import BudgetKit
from budgetkit.errors import InvalidInput
from budgetkit.export_base import (
    DEFAULT_CONSUMER,
    DEFAULT_GROUP,
    SCAN_COUNT,
    ZERO_STREAM_ID,
    BudgetSnapshotRecord,
    EventRow,
    ExportBatch,
    ExportSink,
    LedgerRecord,
    LedgerTotals,
    RestoreConflict,
    budget_ids,
    discover_organizations,
    next_stream_id,
    parse_stream_id,
)
from budgetkit.export_books import (
    BudgetDrift,
    ReconcileReport,
    RestoreReport,
    reconcile,
    restore,
)
from budgetkit.export_jsonl import JsonlSink
from budgetkit.export_postgres import PostgresSink
from budgetkit.replies import text_of

__all__ = [
    "DEFAULT_CONSUMER",
    "DEFAULT_GROUP",
    "BudgetDrift",
    "BudgetSnapshotRecord",
    "EventRow",
    "ExportBatch",
    "ExportSink",
    "ExportStats",
    "Exporter",
    "JsonlSink",
    "LedgerRecord",
    "LedgerTotals",
    "PostgresSink",
    "ReconcileReport",
    "RestoreConflict",
    "RestoreReport",
    "discover_organizations",
    "export_once",
    "open_sink",
    "reconcile",
    "restore",
    "run_exporter",
]

log = logging.getLogger("budgetkit.export")

#: Entries read per stream per XREADGROUP (``batch``), default and bound.
BATCH_DEFAULT = 500
BATCH_MAX = 10_000
#: Ledger streams per XREADGROUP / budgets per snapshot MULTI.
STREAMS_PER_READ = 64
#: A budget whose balance keeps moving is snapshotted at most this often (config changes and
#: rest are snapshotted at once).
SNAPSHOT_INTERVAL_S = 60.0
#: Idle time after which entries pending for another consumer of the group are claimed.
CLAIM_IDLE_MS = 60_000
#: Reads per stream group per pass: under a load the exporter cannot drain, a pass still ends.
ROUNDS_MAX = 100


@dataclass(slots=True)
class ExportStats:
    """What export passes did (summed over passes by ``run_exporter``)."""

    passes: int = 0
    organizations: int = 0
    budgets: int = 0
    snapshots: int = 0
    entries: int = 0
    events: int = 0
    trimmed: int = 0
    elapsed_s: float = 0.0

    def add(self, other: ExportStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True, slots=True)
class _Written:
    snapshot_id: str
    config: str
    at: float  # monotonic s


#: Budget hash fields that move with the ledger (debits, resets) or with holds; a change of any
#: other field (limit, soft limit, period, status, acknowledgement, operator pause, …) is
#: snapshotted at once.
_BALANCE_STATE_FIELDS = frozenset({"bal", "held", "updated", "wz", "thrf", "pstart"})


def _config_digest(snap: BudgetSnapshotRecord) -> str:
    stable = sorted((k, v) for k, v in snap.fields.items() if k not in _BALANCE_STATE_FIELDS)
    return hashlib.sha256(json.dumps(stable).encode("utf-8")).hexdigest()


def _stream_replies(raw: Any) -> list[tuple[str, list[tuple[str, dict[str, str] | None]]]]:
    """XREADGROUP's reply (RESP2 list or RESP3 dict) as [(key, [(id, fields or None)])]."""
    if not raw:
        return []
    pairs = raw.items() if isinstance(raw, dict) else raw
    out = []
    for key, entries in pairs:
        rows = entries
        if isinstance(raw, dict) and entries and isinstance(entries[0], list):
            rows = entries[0]  # RESP3: {key: [[entries]]}
        decoded: list[tuple[str, dict[str, str] | None]] = []
        for sid, values in rows:
            if values:
                decoded.append((text_of(sid), {text_of(k): text_of(v) for k, v in values.items()}))
            else:
                decoded.append((text_of(sid), None))  # deleted while pending
        out.append((text_of(key), decoded))
    return out


def _is_missing_key(error: Exception) -> bool:
    return isinstance(error, ResponseError) and "requires the key to exist" in str(error)


def _is_busy_group(error: Exception) -> bool:
    return isinstance(error, ResponseError) and str(error).startswith("BUSYGROUP")


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Exporter:
    """Drains ledger and event streams into ``sink``; keeps state between passes (which streams
    have the group, which snapshots were written). One exporter per consumer group at a time;
    a replacement with the same ``consumer`` name takes over the entries its predecessor read
    but never acknowledged.

    ``batch``: entries per stream per read (1..10,000). ``trim``: trim exported entries.
    ``rounds_max``: reads per stream group per pass. ``scan_count``: SCAN COUNT of discovery.
    ``claim_idle_ms``: entries of the group pending that long for another consumer are taken
    over (XAUTOCLAIM) and exported by this one. ``snapshot_interval_s``: how often a budget
    whose balance keeps moving is snapshotted.
    """

    def __init__(
        self,
        kit: BudgetKit,
        sink: ExportSink,
        *,
        group: str = DEFAULT_GROUP,
        consumer: str = DEFAULT_CONSUMER,
        batch: int = BATCH_DEFAULT,
        trim: bool = True,
        rounds_max: int = ROUNDS_MAX,
        scan_count: int = SCAN_COUNT,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        snapshot_interval_s: float = SNAPSHOT_INTERVAL_S,
    ) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= BATCH_MAX:
            raise InvalidInput(f"batch must be an int in [1, {BATCH_MAX}]")
        if not 1 <= rounds_max <= 1_000_000 or not 1 <= scan_count <= 1_000_000:
            raise InvalidInput("rounds_max and scan_count must be in [1, 1000000]")
        self.kit = kit
        self.sink = sink
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.trim = trim
        self.rounds_max = rounds_max
        self.scan_count = scan_count
        self.claim_idle_ms = claim_idle_ms
        self.snapshot_interval_s = snapshot_interval_s
        self._redis: Redis = kit.redis
        self._grouped: set[str] = set()  # streams known to have our group
        self._written: dict[tuple[str, str], _Written] = {}  # last snapshot written per budget
        self._seen_last_id: dict[tuple[str, str], str] = {}  # ledger last id at the last pass
        self._currency: dict[tuple[str, str], str] = {}
        self._organizations: list[str] = []

    # -- passes -------------------------------------------------------------------------------

    async def export_once(
        self,
        organizations: Sequence[str] | None = None,
        *,
        rediscover: bool = True,
        sweep: bool = True,
    ) -> ExportStats:
        """One pass over the organizations (default: every organization, by SCAN).

        ``sweep``: examine every stream's groups, not only the streams this pass acknowledged
        entries on: claims entries left pending by another consumer and trims what is left.
        """
        started = time.perf_counter()
        stats = ExportStats(passes=1)
        if organizations is not None:
            orgs = list(organizations)
        else:
            if rediscover or not self._organizations:
                self._organizations = await discover_organizations(
                    self._redis, self.kit.keys, scan_count=self.scan_count
                )
            orgs = self._organizations
        for org in orgs:
            await self._export_org(org, stats, sweep)
        stats.organizations = len(orgs)
        stats.elapsed_s = time.perf_counter() - started
        return stats

    async def run(
        self,
        *,
        interval_s: float = 0.5,
        stop_after_s: float | None = None,
        passes_max: int | None = None,
        stop: asyncio.Event | None = None,
        rediscover_s: float = 10.0,
        sweep_s: float = 60.0,
    ) -> ExportStats:
        """Passes until ``stop`` is set, ``stop_after_s`` elapsed or ``passes_max`` done (one
        of them, or cancel the task). Waits ``interval_s`` between passes; rediscovers the
        organizations at most every ``rediscover_s`` and sweeps (see export_once) every
        ``sweep_s``, the first pass included. A stop request is honoured after a pass that began
        after it, so what was written before the stop is exported."""
        total = ExportStats()
        stop = stop or asyncio.Event()
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        discovered_at = swept_at = -float("inf")
        while True:
            stopping = stop.is_set()  # set before this pass began: this pass is the last
            now = time.monotonic()
            rediscover = now - discovered_at >= rediscover_s
            sweep = now - swept_at >= sweep_s
            discovered_at = now if rediscover else discovered_at
            swept_at = now if sweep else swept_at
            total.add(await self.export_once(rediscover=rediscover, sweep=sweep))
            done = stopping or (passes_max is not None and total.passes >= passes_max)
            if deadline is not None and time.monotonic() >= deadline:
                done = True
            if done:
                return total
            timeout = interval_s
            if deadline is not None:
                timeout = max(0.0, min(interval_s, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)

    # -- one organization ---------------------------------------------------------------------

    async def _export_org(self, org: str, stats: ExportStats, sweep: bool) -> None:
        keys = self.kit.keys
        ids = await budget_ids(self._redis, keys, org)
        stats.budgets += len(ids)
        touched: set[str] = set()
        for chunk in _chunks(ids, STREAMS_PER_READ):
            snapshots = await self._snapshots(org, chunk)
            streams = {keys.ledger(org, bid): bid for bid in chunk}
            await self._ensure_groups(list(streams))
            readable = [k for k in streams if k in self._grouped]

            def ledger_batch(
                rows: list[tuple[str, str, dict[str, str]]],
                streams: Mapping[str, str] = streams,
            ) -> ExportBatch:
                batch = ExportBatch()
                for key, sid, values in rows:
                    currency = self._currency.get((org, streams[key]), "")
                    batch.ledger.append(LedgerRecord.from_stream(org, currency, sid, values))
                return batch

            written = await self._drain(readable, ledger_batch, snapshots, touched)
            if sweep:
                touched.update(readable)
            stats.entries += written
            stats.snapshots += len(snapshots)
        events_key = keys.events(org)
        await self._ensure_groups([events_key])
        if events_key in self._grouped:

            def event_batch(rows: list[tuple[str, str, dict[str, str]]]) -> ExportBatch:
                return ExportBatch(events=[EventRow.from_stream(org, s, v) for _, s, v in rows])

            stats.events += await self._drain([events_key], event_batch, [], touched)
            if sweep:
                touched.add(events_key)
        if self.trim and touched:
            stats.trimmed += await self._trim(sorted(touched))

    async def _snapshots(self, org: str, chunk: Sequence[str]) -> list[BudgetSnapshotRecord]:
        """Changed budgets of the chunk, read in one MULTI with their ledgers' last ids."""
        keys = self.kit.keys
        pipe = self._redis.pipeline(transaction=True)
        pipe.time()
        for bid in chunk:
            pipe.hgetall(keys.budget(org, bid))
            pipe.xinfo_stream(keys.ledger(org, bid))
        replies = await pipe.execute(raise_on_error=False)
        seconds, micros = replies[0]
        taken_us = int(seconds) * 1_000_000 + int(micros)
        out = []
        for i, bid in enumerate(chunk):
            raw_hash, info = replies[1 + 2 * i], replies[2 + 2 * i]
            if isinstance(raw_hash, Exception) or not raw_hash:
                continue  # indexed but gone: nothing to snapshot
            values = {text_of(k): text_of(v) for k, v in raw_hash.items()}
            last = ZERO_STREAM_ID
            if isinstance(info, dict):
                last = text_of(info["last-generated-id"])
            elif isinstance(info, Exception) and not str(info).startswith("no such key"):
                raise info
            snap = BudgetSnapshotRecord(org, bid, taken_us, last, values)
            self._currency[(org, bid)] = values.get("cur", "")
            if self._wants_snapshot(snap):
                out.append(snap)
            self._seen_last_id[(org, bid)] = last
        return out

    def _wants_snapshot(self, snap: BudgetSnapshotRecord) -> bool:
        """Whether to write this snapshot: always when the configuration or status changed;
        when only the balance state moved, once the budget is at rest (its ledger did not move
        since the last pass) or its last snapshot is ``snapshot_interval_s`` old. A hot budget
        gets about one snapshot per interval; restore rolls the ledger forward from it."""
        key = (snap.organization_id, snap.budget_id)
        written = self._written.get(key)
        if written is None or written.config != _config_digest(snap):
            return True
        if written.snapshot_id == snap.snapshot_id:
            return False
        at_rest = self._seen_last_id.get(key) == snap.ledger_last_id
        return at_rest or time.monotonic() - written.at >= self.snapshot_interval_s

    async def _ensure_groups(self, stream_keys: Sequence[str]) -> None:
        """XGROUP CREATE at id 0 on streams not known to have the group (no MKSTREAM: a
        budget without ledger entries gets no stream key)."""
        missing = [k for k in stream_keys if k not in self._grouped]
        if not missing:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in missing:
            pipe.xgroup_create(key, self.group, id="0")
        for key, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
            if not isinstance(reply, Exception) or _is_busy_group(reply):
                self._grouped.add(key)
            elif not _is_missing_key(reply):
                raise reply

    async def _read(self, streams: Mapping[str, str]) -> Any:
        wanted: dict[Any, Any] = dict(streams)
        try:
            return await self._redis.xreadgroup(self.group, self.consumer, wanted, count=self.batch)
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # A stream was deleted and recreated (FLUSHALL, restore): create the group again.
            self._grouped.difference_update(streams)
            await self._ensure_groups(list(streams))
            present: dict[Any, Any] = {k: v for k, v in streams.items() if k in self._grouped}
            if not present:
                return []
            return await self._redis.xreadgroup(
                self.group, self.consumer, present, count=self.batch
            )

    async def _drain(
        self,
        stream_keys: Sequence[str],
        to_batch: Callable[[list[tuple[str, str, dict[str, str]]]], ExportBatch],
        snapshots: list[BudgetSnapshotRecord],
        touched: set[str],
    ) -> int:
        """Reads, writes, acknowledges until the streams are drained (or rounds_max reads);
        returns the entries written. Snapshots go with the first write."""
        written = 0
        carry = snapshots
        for start_id in ("0", ">"):  # "0": delivered to us, never acknowledged; ">": new
            active = dict.fromkeys(stream_keys, start_id)
            for _ in range(self.rounds_max):
                if not active:
                    break
                replies = _stream_replies(await self._read(active))
                rows = [(k, sid, v) for k, entries in replies for sid, v in entries if v]
                acks = {k: [sid for sid, _ in entries] for k, entries in replies if entries}
                batch = to_batch(rows)
                batch.snapshots = carry
                if len(batch):
                    await self.sink.write(batch)
                    self._remember(carry)
                    carry = []
                if acks:
                    await self._ack(acks)
                    touched.update(acks)
                written += len(rows)
                # A stream is drained when a read returns fewer than `batch` entries for it.
                full = {k for k, ids in acks.items() if len(ids) >= self.batch}
                active = {k: active[k] for k in active if k in full}
        if carry:
            await self.sink.write(ExportBatch(snapshots=carry))
            self._remember(carry)
        return written

    def _remember(self, snapshots: Sequence[BudgetSnapshotRecord]) -> None:
        now = time.monotonic()
        for s in snapshots:
            written = _Written(s.snapshot_id, _config_digest(s), now)
            self._written[(s.organization_id, s.budget_id)] = written

    async def _ack(self, acks: Mapping[str, list[str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for key, ids in acks.items():
            pipe.xack(key, self.group, *ids)
        await pipe.execute()

    async def _trim(self, stream_keys: Sequence[str]) -> int:
        """XTRIM MINID each stream below the oldest entry that any of its groups has not
        acknowledged (never an unexported entry, also not another exporter's)."""
        pipe = self._redis.pipeline(transaction=False)
        for key in stream_keys:
            pipe.xinfo_groups(key)
        infos = await pipe.execute(raise_on_error=False)
        pending_of: list[tuple[str, str]] = []
        bounds: dict[str, list[str]] = {}
        for key, groups in zip(stream_keys, infos, strict=True):
            if isinstance(groups, Exception) or not groups:
                continue
            for g in groups:
                name = text_of(g["name"])
                if int(g["pending"]) > 0:
                    pending_of.append((key, name))
                else:
                    bounds.setdefault(key, []).append(
                        next_stream_id(text_of(g["last-delivered-id"]))
                    )
        if pending_of:
            pipe = self._redis.pipeline(transaction=False)
            for key, name in pending_of:
                pipe.xpending(key, name)
            orphaned = []
            for (key, name), summary in zip(pending_of, await pipe.execute(), strict=True):
                if summary.get("min") is None:  # acknowledged meanwhile: trim it next pass
                    bounds.setdefault(key, []).append("0-1")
                    continue
                bounds.setdefault(key, []).append(text_of(summary["min"]))
                others = [c for c in summary["consumers"] if text_of(c["name"]) != self.consumer]
                if name == self.group and others:
                    orphaned.append(key)
            await self._claim(orphaned)
        pipe = self._redis.pipeline(transaction=False)
        trimmed_keys = []
        for key, candidates in bounds.items():
            minid = min(candidates, key=parse_stream_id)
            if minid != "0-1":
                pipe.xtrim(key, minid=minid, approximate=False)
                trimmed_keys.append(key)
        if not trimmed_keys:
            return 0
        return sum(int(n) for n in await pipe.execute())

    async def _claim(self, stream_keys: Sequence[str]) -> None:
        """Takes over entries of our group pending for another consumer (an exporter that ran
        under another name and died) once idle for ``claim_idle_ms``; the next pass re-reads
        them as its own. Until then they hold back the trim of their stream."""
        if not stream_keys:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key in stream_keys:
            pipe.xautoclaim(
                key, self.group, self.consumer, self.claim_idle_ms, "0-0", count=self.batch
            )
        await pipe.execute()


async def export_once(
    kit: BudgetKit,
    sink: ExportSink,
    *,
    organizations: Sequence[str] | None = None,
    group: str = DEFAULT_GROUP,
    consumer: str = DEFAULT_CONSUMER,
    batch: int = BATCH_DEFAULT,
    trim: bool = True,
) -> ExportStats:
    """One export pass with a fresh ``Exporter`` (see the module docstring)."""
    exporter = Exporter(kit, sink, group=group, consumer=consumer, batch=batch, trim=trim)
    return await exporter.export_once(organizations)


async def run_exporter(
    kit: BudgetKit,
    sink: ExportSink,
    *,
    batch: int = BATCH_DEFAULT,
    trim: bool = True,
    interval_s: float = 0.5,
    stop_after_s: float | None = None,
    passes_max: int | None = None,
    stop: asyncio.Event | None = None,
    group: str = DEFAULT_GROUP,
    consumer: str = DEFAULT_CONSUMER,
) -> ExportStats:
    """Export passes every ``interval_s`` until ``stop`` is set, ``stop_after_s`` elapsed or
    ``passes_max`` passes ran (or the task is cancelled); returns the summed stats."""
    exporter = Exporter(kit, sink, group=group, consumer=consumer, batch=batch, trim=trim)
    return await exporter.run(
        interval_s=interval_s, stop_after_s=stop_after_s, passes_max=passes_max, stop=stop
    )


async def open_sink(spec: str, *, schema: str = "budgetkit", fsync: bool = True) -> ExportSink:
    """A sink from a CLI-style spec: ``postgresql://…`` / ``postgres://…`` (opened, tables
    created in ``schema``), ``jsonl:DIR`` or a plain directory path (JSON Lines)."""
    if spec.startswith(("postgresql://", "postgres://")):
        return await PostgresSink.connect(spec, schema=schema)
    directory = spec.removeprefix("jsonl:")
    if not directory:
        raise InvalidInput("a sink is postgresql://… or jsonl:DIRECTORY")
    return JsonlSink(directory, fsync=fsync)
